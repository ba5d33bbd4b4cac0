"""CPU-bound speedup of `znode --concurrency N` over --concurrency 1.

    .venv/bin/python tools/bench_concurrency.py [--tasks 8] [--work 3000000] [--runs 3]

For each concurrency (1, then N), starts `zbroker start` and one `znode --functions util
--concurrency C`, runs --tasks `burn(--work)` tasks with `Client.map`, and reports the
median wall time over --runs and the speedup. Quote the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cluster import Cluster  # type: ignore[import-not-found]

from client import Client


def timed_runs(args: argparse.Namespace, concurrency: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory(prefix="ztb-conc-") as tmp:
        cluster = Cluster(Path(tmp), nodes=1, node_args=["--concurrency", str(concurrency)])
        with cluster as url, Client(url, timeout=600) as client:
            client.map("burn", [(1000,)] * concurrency * 2)  # warm up every process
            for run in range(args.runs):
                started = time.perf_counter()
                client.map("burn", [(args.work,)] * args.tasks)
                times.append(time.perf_counter() - started)
                print(
                    f"concurrency {concurrency} run {run + 1}: {times[-1]:.2f} s", file=sys.stderr
                )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=8, help="burn tasks per run")
    parser.add_argument("--work", type=int, default=3_000_000, help="iterations per burn task")
    parser.add_argument("--runs", type=int, default=3, help="runs per concurrency")
    parser.add_argument("--concurrency", type=int, default=2, help="compared with 1")
    args = parser.parse_args()
    one = statistics.median(timed_runs(args, 1))
    many = statistics.median(timed_runs(args, args.concurrency))
    print(
        f"{args.tasks} x burn({args.work}): concurrency 1 {one:.2f} s, "
        f"concurrency {args.concurrency} {many:.2f} s: speedup {one / many:.2f}x "
        f"(medians of {args.runs} runs)"
    )


if __name__ == "__main__":
    main()
