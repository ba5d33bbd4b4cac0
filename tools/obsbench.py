"""`tools/bench.py observe`: what seeing the broker run costs its throughput.

Two brokers side by side, each with two default nodes (`znode --functions math
--concurrency 1`, as `tools/bench.py compare` starts them) and its store on: one as
`zbroker start` measures by default (metrics on), one with `--no-metrics`. Then --runs
rounds, alternating which goes first, of the bulk figure: `Client.map("add", ...)` of
--tasks `add(0, 0)` tasks. With --monitor, a `zbroker monitor` reads the broker with
metrics on once a second meanwhile (its STATUS requests included in the cost).
Target (issue "See it run"): metrics cost at most 5 % of the bulk figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from client import Client
from client.cluster import LocalCluster
from compare import progress


def observe(args: argparse.Namespace) -> None:
    """What the broker's metrics (and, with --monitor, a monitor reading them) cost the
    bulk Client.map figure: medians over --runs alternating rounds, and the cost in percent."""
    setups = {"metrics on": [], "metrics off": ["--no-metrics"]}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    node_args = ["--concurrency", "1"]
    clusters = {
        name: LocalCluster(nodes=2, functions=["math"], broker_args=extra, node_args=node_args)
        for name, extra in setups.items()
    }
    try:
        for cluster in clusters.values():
            cluster.__enter__()
        if args.monitor:
            clusters["metrics on"].start_monitor()
        for run in range(args.runs):
            order = list(setups)
            if run % 2:
                order.reverse()
            for name in order:
                rates[name].append(bulk(clusters[name].url, args.tasks))
                progress(f"run {run + 1}/{args.runs}: {name} {rates[name][-1]:,.0f} tasks/s")
    finally:
        for cluster in clusters.values():
            cluster.close()
    on, off = (statistics.median(rates[name]) for name in setups)
    cost = 100 * (off - on) / off
    verdict = "met" if cost <= 5 else "not met"
    print(
        f"bulk Client.map of {args.tasks:,} add(0, 0) tasks, medians of {args.runs} runs: "
        f"metrics on {on:,.0f} tasks/s, --no-metrics {off:,.0f} tasks/s; metrics cost "
        f"{cost:.1f} % (target <= 5 %: {verdict})"
        + (", with zbroker monitor reading once a second" if args.monitor else "")
    )
    for name, values in rates.items():
        print(f"  {name}: " + ", ".join(f"{v:,.0f}" for v in values))


def bulk(url: str, tasks: int) -> float:
    with Client(url) as client:
        client.map("add", [(0, 0)] * 1000)  # warm up connections and slots
        started = time.perf_counter()
        results = client.map("add", [(0, 0)] * tasks)
        elapsed = time.perf_counter() - started
    if len(results) != tasks:
        raise SystemExit(f"error: {len(results)} results for {tasks} tasks")
    return tasks / elapsed


def add_observe(sub: Any, subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    parser = subcommand(sub, "observe", observe)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per bulk run")
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument(
        "--monitor", action="store_true", help="run zbroker monitor on the metrics-on broker"
    )
