"""End-to-end benchmark on loopback: pipelined throughput and sequential REQ latency.

    .venv/bin/python tools/bench.py [--tasks 20000] [--runs 5] [--calls 2000] [--nodes 2]

Starts `zbroker start` and N `znode --functions util` processes as a user would, then
  * throughput: `Client.map("noop", ...)` of --tasks no-op tasks, --runs times;
  * latency: --calls sequential `Client.execute("noop")` round trips, --runs times.
Reports the median over runs (and every run), as a table or --json. Quote the medians.
"""

from __future__ import annotations

import argparse
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


class Cluster:
    """`zbroker start` and `nodes` x `znode --functions util` on loopback, as a user runs them;
    the context manager yields the broker URL and stops everything with SIGTERM."""

    def __init__(
        self,
        workdir: Path,
        nodes: int,
        node_args: list[str] | None = None,
        broker_args: list[str] | None = None,
    ) -> None:
        self.workdir, self.nodes = workdir, nodes
        self.node_args, self.broker_args = node_args or [], broker_args or []
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, argv: list[str], log: str) -> None:
        with (self.workdir / log).open("wb") as out:
            self.procs.append(subprocess.Popen(argv, stdout=out, stderr=out))

    def __enter__(self) -> str:
        ready = self.workdir / "endpoint"
        self._start(
            [
                str(BIN / "zbroker"),
                "start",
                "--bind",
                "tcp://127.0.0.1:0",
                "--ready-file",
                str(ready),
                "--log-level",
                "WARNING",
                *self.broker_args,
            ],
            "broker.log",
        )
        wait_for(lambda: ready.exists() and ready.read_text().strip(), "the broker", self.procs)
        url = ready.read_text().strip()
        for i in range(self.nodes):
            self._start(
                [
                    str(BIN / "znode"),
                    "--broker",
                    url,
                    "--functions",
                    "util",
                    "--log-level",
                    "WARNING",
                    *self.node_args,
                ],
                f"node{i}.log",
            )
        expected = self.nodes * _processes(self.node_args)
        wait_for(lambda: registered(url, expected), f"{expected} node processes", self.procs)
        return url

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=15)


def _processes(node_args: list[str]) -> int:
    if "--concurrency" in node_args:
        return int(node_args[node_args.index("--concurrency") + 1])
    return 1


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
        "threads": args.threads,
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
    parser.add_argument("--concurrency", type=int, default=1, help="processes per znode")
    parser.add_argument("--threads", type=int, default=1, help="slot threads per process")
    parser.add_argument(
        "--node-arg", action="append", default=[], help="extra argument for znode (repeatable)"
    )
    parser.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        help="extra argument for zbroker start (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    node_args = ["--concurrency", str(args.concurrency), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="ztb-bench-") as tmp:
        cluster = Cluster(Path(tmp), args.nodes, node_args + args.node_arg, args.broker_arg)
        with cluster as url:
            result = measure(args, url)
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
