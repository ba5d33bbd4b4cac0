"""`tools/bench.py split`: one job cut into parts, run on nodes and by multiprocessing.Pool.

Three ways to compute the sum of squares over 1..N, alternating within each run so that the
host's drift hits each alike:

- split: `Client.split(FUNCTION, 1, N, parts=P)` on two default nodes (`znode --functions
  tools/sumsquares.py`, as many processes each as the machine has cores): the split, P part
  tasks and the combine, all through the broker;
- one task: `Client.execute(FUNCTION, 1, N)`, the whole range on one node process;
- Pool(W): `multiprocessing.Pool(W).starmap` over the same P ranges, summed; the pool is
  started before the clock starts, as the nodes are.

FUNCTION is `counted_sum_squares` (CPU-bound: one square at a time). `--closed-form` uses
the math set's `sum_squares` instead, whose parts finish at once: that measures only what
each way costs per part.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import Client
from client.cluster import LocalCluster
from compare import progress
from node import ranges

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the pool's workers import the function from here too

import sumsquares  # noqa: E402
from node.functions import mathset  # noqa: E402


def split(args: argparse.Namespace) -> None:
    """One job cut into parts on two default nodes, against one task and multiprocessing.Pool.

    Reports the median wall time of each way over --runs, every run's, and the ratios
    split/Pool and one task/split. See tools/splitbench.py for what each way does."""
    name, function = (
        ("sum_squares", mathset.sum_squares)
        if args.closed_form
        else ("counted_sum_squares", sumsquares.counted_sum_squares)
    )
    sets = ["math"] if args.closed_form else [str(HERE / "sumsquares.py")]
    expected = function(1, args.n)
    times: dict[str, list[float]] = {"split": [], "one task": [], "pool": []}
    cluster = LocalCluster(nodes=2, functions=sets)
    with cluster, Client(cluster.url, timeout=3600) as client:
        client.split(name, 1, 1000, parts=8).result(60)  # warm up every node process
        with multiprocessing.Pool(args.pool) as pool:
            pool.starmap(function, ranges(args.pool * 2, 1, 1000))  # warm up
            ways: dict[str, Callable[[], Any]] = {
                "split": lambda: client.split(name, 1, args.n, parts=args.parts).result(),
                "one task": lambda: client.execute(name, 1, args.n),
                "pool": lambda: sum(pool.starmap(function, ranges(args.parts, 1, args.n))),
            }
            for run in range(args.runs):
                order = list(ways)
                order = order[run % len(order) :] + order[: run % len(order)]
                for way in order:
                    started = time.perf_counter()
                    result = ways[way]()
                    times[way].append(time.perf_counter() - started)
                    assert result == expected, f"{way} gave {result}, not {expected}"
                    progress(f"run {run + 1}: {way} {times[way][-1]:.3f} s")
    medians = {way: statistics.median(values) for way, values in times.items()}
    print(
        f"{name} over 1..{args.n:,} in {args.parts} parts (medians of {args.runs} runs): "
        f"split on 2 nodes {medians['split']:.3f} s, one task {medians['one task']:.3f} s, "
        f"Pool({args.pool}) {medians['pool']:.3f} s; split/Pool "
        f"{medians['split'] / medians['pool']:.3f}, one task/split "
        f"{medians['one task'] / medians['split']:.2f}x"
    )
    for way, values in times.items():
        print(f"  {way}: " + ", ".join(f"{v:.3f}" for v in values) + " s")


def add_split(sub: Any, subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    parser = subcommand(sub, "split", split)
    parser.add_argument("--n", type=int, default=100_000_000, help="sum of squares over 1..N")
    parser.add_argument("--parts", type=int, default=100, help="parts of the job")
    parser.add_argument("--pool", type=int, default=2, help="processes of the Pool")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way")
    parser.add_argument(
        "--closed-form",
        action="store_true",
        help="the math set's sum_squares (closed form: parts finish at once)",
    )
