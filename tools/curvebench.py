"""`tools/bench.py curve`: what CurveZMQ costs, against the same broker without it.

Two brokers side by side, each with its store and two default nodes (`znode --functions math
--concurrency 1`): one with `--curve` and `--authorized` (the nodes and the client with their
keys, made by `zbroker keys new`), one without. Then --runs rounds, alternating which goes
first, of the bulk figure (`Client.map` of --tasks `add(0, 0)`) and the sequential one
(--calls `Client.execute("add", 0, 0)` one at a time: p50).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.security import PeerKeys
from client import Client
from client.cluster import LocalCluster, command
from compare import progress


def curve(args: argparse.Namespace) -> None:
    """What CurveZMQ costs bulk and sequential work: medians over --runs alternating rounds
    of a broker with --curve against one without, and the cost of each in percent."""
    with tempfile.TemporaryDirectory(prefix="ztb-curve-") as tmp:
        keys, clusters = _clusters(Path(tmp))
        bulk: dict[str, list[float]] = {name: [] for name in clusters}
        p50: dict[str, list[float]] = {name: [] for name in clusters}
        try:
            for cluster in clusters.values():
                cluster.__enter__()
            for run in range(args.runs):
                order = list(clusters) if run % 2 == 0 else list(reversed(clusters))
                for name in order:
                    options = keys if name == "curve" else {}
                    url = clusters[name].url
                    bulk[name].append(_bulk(url, args.tasks, options))
                    p50[name].append(_p50(url, args.calls, options))
                    progress(
                        f"run {run + 1}/{args.runs}: {name} bulk {bulk[name][-1]:,.0f} tasks/s, "
                        f"sequential p50 {p50[name][-1]:,.0f} us"
                    )
        finally:
            for cluster in clusters.values():
                cluster.close()
    medians = {name: (statistics.median(bulk[name]), statistics.median(p50[name])) for name in bulk}
    (on_bulk, on_p50), (off_bulk, off_p50) = medians["curve"], medians["plain"]
    slower = 100 * (off_bulk - on_bulk) / off_bulk
    later = 100 * (on_p50 - off_p50) / off_p50
    print(
        f"medians of {args.runs} runs: bulk Client.map of {args.tasks:,} tasks with CURVE "
        f"{on_bulk:,.0f} tasks/s, without {off_bulk:,.0f} ({slower:.1f} % less); sequential "
        f"p50 with CURVE {on_p50:,.0f} us, without {off_p50:,.0f} us ({later:+.1f} %)"
    )
    for name in bulk:
        print(f"  {name}: bulk " + ", ".join(f"{v:,.0f}" for v in bulk[name]))
        print(f"  {name}: p50 us " + ", ".join(f"{v:,.0f}" for v in p50[name]))


def _clusters(tmp: Path) -> tuple[dict[str, Any], dict[str, LocalCluster]]:
    authorized = tmp / "authorized"
    for role in ("nodes", "clients", "admins"):
        (authorized / role).mkdir(parents=True)
    for name in ("broker", "node", "user"):
        subprocess.run([*command("zbroker"), "keys", "new", name, "--dir", str(tmp)], check=True)
    (authorized / "nodes" / "node.pub").write_bytes((tmp / "node.pub").read_bytes())
    (authorized / "clients" / "user.pub").write_bytes((tmp / "user.pub").read_bytes())
    broker_key = str(tmp / "broker.pub")
    curve_broker = ["--curve", str(tmp / "broker.key"), "--authorized", str(authorized)]
    node_keys = ["--curve", str(tmp / "node.key"), "--broker-key", broker_key]
    secure = LocalCluster(
        tmp / "curve",
        nodes=2,
        broker_args=curve_broker,
        node_args=["--concurrency", "1", *node_keys],
    )
    secure.keys = PeerKeys.load(tmp / "user.key", broker_key)
    plain = LocalCluster(tmp / "plain", nodes=2, node_args=["--concurrency", "1"])
    keys = {"curve": str(tmp / "user.key"), "broker_key": broker_key}
    return keys, {"curve": secure, "plain": plain}


def _bulk(url: str, tasks: int, keys: dict[str, str]) -> float:
    with Client(url, **keys) as client:  # type: ignore[arg-type]
        client.map("add", [(0, 0)] * 1000)  # warm up
        started = time.perf_counter()
        client.map("add", [(0, 0)] * tasks)
        return tasks / (time.perf_counter() - started)


def _p50(url: str, calls: int, keys: dict[str, str]) -> float:
    samples = []
    with Client(url, **keys) as client:  # type: ignore[arg-type]
        for _ in range(50):
            client.execute("add", 0, 0)
        for _ in range(calls):
            started = time.perf_counter()
            client.execute("add", 0, 0)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def add_curve(sub: Any, subcommand: Callable[..., argparse.ArgumentParser]) -> None:
    parser = subcommand(sub, "curve", curve)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per bulk run")
    parser.add_argument("--calls", type=int, default=2_000, help="sequential calls per run")
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are reported")
