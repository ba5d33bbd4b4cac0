"""End-to-end benchmark on loopback: pipelined throughput and sequential REQ latency.

    .venv/bin/python tools/bench.py [--tasks 20000] [--runs 5] [--calls 2000] [--nodes 2]

Starts `zbroker start` and N `znode --functions util` processes as a user would, then
  * throughput: `Client.map("noop", ...)` of --tasks no-op tasks, --runs times;
  * latency: --calls sequential `Client.execute("noop")` round trips, --runs times.
Reports the median over runs (and every run), as a table or --json. Quote the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from cluster import Cluster  # type: ignore[import-not-found]

from client import Client


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
