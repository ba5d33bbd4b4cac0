"""End-to-end benchmark on loopback: pipelined throughput and sequential REQ latency.

    .venv/bin/python tools/bench.py [--tasks 20000] [--runs 5] [--calls 2000] [--nodes 2]

Starts `zbroker start` and N `znode --functions util` processes as a user would, then
  * throughput: `Client.map("noop", ...)` of --tasks no-op tasks, --runs times;
  * latency: --calls sequential `Client.execute("noop")` round trips, --runs times.
Reports the median over runs (and every run), as a table or --json. Quote the medians.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from broker.control import BrokerUnreachable, status
from client import Client

BIN = Path(sys.executable).parent


def wait_for(predicate: Any, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        for proc in procs:
            if proc.poll() is not None:
                sys.exit(f"error: {proc.args} exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting for {what}")
        time.sleep(0.05)


def registered(url: str, count: int) -> bool:
    try:
        return len(status(url, timeout=0.5)["nodes"]) >= count
    except BrokerUnreachable:
        return False


def start_cluster(args: argparse.Namespace, workdir: Path) -> tuple[str, list[Any]]:
    procs: list[subprocess.Popen[bytes]] = []
    ready = workdir / "endpoint"
    broker_argv = [
        str(BIN / "zbroker"),
        "start",
        "--bind",
        "tcp://127.0.0.1:0",
        "--ready-file",
        str(ready),
        "--log-level",
        "WARNING",
        *args.broker_arg,
    ]
    procs.append(subprocess.Popen(broker_argv, stderr=(workdir / "broker.log").open("wb")))
    wait_for(lambda: ready.exists() and ready.read_text().strip(), "the broker", procs)
    url = ready.read_text().strip()
    for i in range(args.nodes):
        argv = [
            str(BIN / "znode"),
            "--broker",
            url,
            "--functions",
            "util",
            "--concurrency",
            str(args.concurrency),
            "--log-level",
            "WARNING",
        ]
        procs.append(subprocess.Popen(argv, stderr=(workdir / f"node{i}.log").open("wb")))
    wait_for(lambda: registered(url, args.nodes), f"{args.nodes} nodes", procs)
    return url, procs


def throughput(url: str, tasks: int) -> float:
    with Client(url) as client:
        client.map("noop", [()] * 100)  # warm up connections and slots
        started = time.perf_counter()
        results = client.map("noop", [()] * tasks)
        elapsed = time.perf_counter() - started
    assert len(results) == tasks
    return tasks / elapsed


def latency(url: str, calls: int) -> tuple[float, float]:
    samples = []
    with Client(url) as client:
        for _ in range(50):
            client.execute("noop")
        for _ in range(calls):
            started = time.perf_counter()
            client.execute("noop")
            samples.append(time.perf_counter() - started)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    rates, p50s, p99s = [], [], []
    for run in range(args.runs):
        rates.append(throughput(url, args.tasks))
        p50, p99 = latency(url, args.calls)
        p50s.append(p50)
        p99s.append(p99)
        print(
            f"run {run + 1}/{args.runs}: {rates[-1]:,.0f} tasks/s pipelined, "
            f"p50 {p50:.0f} us, p99 {p99:.0f} us",
            file=sys.stderr,
        )
    return {
        "nodes": args.nodes,
        "concurrency": args.concurrency,
        "tasks": args.tasks,
        "calls": args.calls,
        "runs": args.runs,
        "throughput_median": statistics.median(rates),
        "latency_p50_us_median": statistics.median(p50s),
        "latency_p99_us_median": statistics.median(p99s),
        "throughput_runs": [round(r) for r in rates],
        "p50_runs": [round(v) for v in p50s],
        "p99_runs": [round(v) for v in p99s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per throughput run")
    parser.add_argument("--calls", type=int, default=2_000, help="round trips per latency run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")
    parser.add_argument("--nodes", type=int, default=2, help="znode processes")
    parser.add_argument("--concurrency", type=int, default=1, help="slots per node")
    parser.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        help="extra argument for zbroker start (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ztb-bench-"))
    procs: list[Any] = []
    try:
        url, procs = start_cluster(args, workdir)
        result = measure(args, url)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"pipelined throughput: {result['throughput_median']:,.0f} tasks/s (median of "
            f"{args.runs} runs of {args.tasks} no-op tasks, {args.nodes} nodes)"
        )
        print(
            f"sequential latency: p50 {result['latency_p50_us_median']:.0f} us, "
            f"p99 {result['latency_p99_us_median']:.0f} us (medians of {args.runs} runs of "
            f"{args.calls} calls)"
        )


if __name__ == "__main__":
    main()
