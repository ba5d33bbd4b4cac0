"""One broker and thousands of nodes: what it costs, how fast they register, and how liveness
and placement hold, measured with simulated nodes (tools/nodesim.py) in processes of their
own.

    .venv/bin/python tools/scalebench.py [--nodes 1000,5000,10000] [--processes 2] [--json]

For each count N: `zbroker start` with its defaults (a store in a temporary directory,
heartbeats 1 s x 3) through client.cluster.LocalCluster, then N simulated nodes started all
at once (a connection storm), and:

  register     seconds until every node is registered (the simulator's clock, from its
               workers' start), and the REGISTERs each node sent (1 is the goal)
  idle         the heartbeat interval the broker chose for N nodes; its CPU (share of one
               core) and RSS over --idle seconds with the N nodes registered and no task;
               the simulator's CPU beside it; RSS per node: (RSS with the nodes - RSS
               before them) / N
  plateau      with --plateau S, the broker's RSS every 10 s over S more seconds of idle:
               first, last, its slope (MB per hour) over all of it and over its last
               third; the goal is none after the plateau (--json has every sample)
  status       the round trip of a default STATUS (the 50 busiest nodes and the sums), and
               of a page of 500 nodes: medians of 11 (the broker's loop is busy that long
               and a little less), with the reply's size
  serial       Client.execute of `noop`, one at a time, --serial of them: p50 and p99
  pipelined    Client.map of --tasks `noop` tasks: tasks per second
  spread       of the pipelined tasks, how many each node ran: the share of nodes that ran
               any, and min / median / max per node
  stall        the broker stopped with SIGSTOP for --stall seconds (2.5) and resumed: the
               live nodes it declared dead (the goal is none), whether it counted the stall,
               and the REGISTERs nodes sent again, over two expiries after
  detection    --vanish (default 10 %) of the nodes fall silent with their connections open
               (`freeze`): seconds until the broker has dropped them all (interval x liveness
               is 3 s)

Nothing here is a pass or fail: the figures go to docs/performance.md with the command.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from broker.protocol import MAX_STATUS_PAGE
from client import Client, ControlClient, ReqLink
from client.cluster import LocalCluster
from compare import cpu_seconds
from fuzz import rss_kib
from nodesim import NodeSim

VERSION = "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="1000,5000,10000", help="node counts, comma-separated")
    parser.add_argument("--processes", type=int, default=2, help="simulator worker processes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument("--serial", type=int, default=1000, help="sequential executes")
    parser.add_argument("--tasks", type=int, default=20000, help="tasks of the pipelined map")
    parser.add_argument("--vanish", type=float, default=0.1, help="share of nodes that fall silent")
    parser.add_argument(
        "--stall", type=float, default=2.5, help="seconds the broker is stopped (0: not)"
    )
    parser.add_argument(
        "--plateau", type=float, default=0.0, help="seconds of idle RSS sampling (0: none)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per count")
    parser.add_argument("--version", action="version", version=f"ztb tools/scalebench.py {VERSION}")
    args = parser.parse_args(argv)
    try:
        counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes: comma-separated numbers expected, got {args.nodes!r}")
    signal.signal(signal.SIGTERM, _interrupt)
    rows = []
    for count in counts:
        row = measure(count, args)
        rows.append(row)
        if args.json:
            print(orjson.dumps(row).decode(), flush=True)
        else:
            shown = {k: v for k, v in row.items() if k != "plateau_samples"}
            print(f"{count:,} nodes: " + orjson.dumps(shown).decode(), file=sys.stderr, flush=True)
    if not args.json:
        print(table(rows))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: the broker and nodes are stopped


def measure(count: int, args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="ztb-scale-") as tmp,
        LocalCluster(Path(tmp)) as cluster,
    ):
        assert cluster.broker is not None  # entering started it
        pid = cluster.broker.pid
        time.sleep(1.0)  # let the broker settle after its start: the base of RSS per node
        rss_before = rss_kib(pid)
        with NodeSim(
            cluster.url, nodes=count, processes=args.processes, functions=("noop",)
        ) as sim:
            stats = sim.wait_registered(timeout=max(60.0, count / 50))
            row: dict[str, Any] = {
                "nodes": count,
                "register_s": stats["all_registered_s"],
                "registers": stats["register_counts"],
            }
            wait_for(lambda: status(cluster.url)["nodes_total"] == count, 60, "every node listed")
            row.update(idle(cluster.url, pid, sim, args.idle, rss_before, count))
            row.update(plateau(pid, sim, args.plateau))
            row.update(status_costs(cluster.url))
            row.update(stall(cluster.url, pid, sim, args.stall))
            with Client(cluster.url, timeout=120) as client:
                row.update(serial(client, args.serial))
                row.update(pipelined(client, args.tasks, cluster.url))
            row.update(detection(cluster.url, sim, count, args.vanish))
            row["sim_final"] = {
                k: v for k, v in sim.stats().items() if k in ("broker_deaths", "disconnects")
            }
        row["counters"] = {
            k: v
            for k, v in status(cluster.url)["counters"].items()
            if k.startswith(("nodes_", "loop_"))
        }
    return row


def status(url: str) -> dict[str, Any]:
    with ReqLink(url, resend_interval=10.0) as link:
        return ControlClient(link).status(timeout=30)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"scalebench: timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def idle(
    url: str, pid: int, sim: NodeSim, seconds: float, rss_before: int, count: int
) -> dict[str, Any]:
    """The broker's and the simulator's CPU over `seconds` of idle, and the broker's RSS."""
    broker0, sim0, t0 = cpu_seconds(pid), sim.stats()["cpu_s"], time.monotonic()
    time.sleep(seconds)
    broker1, sim1, t1 = cpu_seconds(pid), sim.stats()["cpu_s"], time.monotonic()
    rss = rss_kib(pid)
    return {
        "idle_broker_cpu": round((sum(broker1.values()) - sum(broker0.values())) / (t1 - t0), 3),
        "heartbeat_interval": status(url)["heartbeat_interval"],
        "idle_sim_cpu": round((sim1 - sim0) / (t1 - t0), 3),
        "rss_mib": round(rss / 1024, 1),
        "rss_per_node_kib": round((rss - rss_before) / count, 1),
    }


def plateau(pid: int, sim: NodeSim, seconds: float) -> dict[str, Any]:
    """The broker's RSS over `seconds` more of idle with every node registered, sampled
    every PLATEAU_EVERY s: first, last, the slope by least squares (MB per hour) over all of
    them and over their last third, and every sample."""
    if not seconds:
        return {}
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    while (now := time.monotonic()) - started <= seconds:
        if not sim.alive():
            raise SystemExit("scalebench: a nodesim worker died")
        samples.append((now - started, rss_kib(pid) / 1024))
        time.sleep(PLATEAU_EVERY)
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    tail = samples[len(samples) * 2 // 3 :]  # the last third: after the plateau, if any
    return {
        "plateau_s": round(xs[-1]),
        "plateau_rss_mib": [round(ys[0], 1), round(ys[-1], 1)],
        "plateau_mib_per_hour": round(_slope(samples) * 3600, 2),
        "plateau_last_third_mib_per_hour": round(_slope(tail) * 3600, 2),
        "plateau_samples": [[round(x), round(y, 1)] for x, y in samples],
    }


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least squares, per second; 0 with fewer than three samples."""
    if len(samples) < 3:
        return 0.0
    return statistics.linear_regression([x for x, _ in samples], [y for _, y in samples]).slope


PLATEAU_EVERY = 10.0


def status_costs(url: str) -> dict[str, Any]:
    """Round trips of the default STATUS and of a page of all nodes (medians of 11)."""
    figures: dict[str, Any] = {}
    with ReqLink(url, resend_interval=10.0) as link:
        control = ControlClient(link)
        asks: dict[str, Callable[[], dict[str, Any]]] = {
            "status": lambda: control.status(timeout=30),
            "status_page": lambda: control.nodes_page(0, MAX_STATUS_PAGE, timeout=30),
        }
        for name, ask in asks.items():
            times, size = [], 0
            for _ in range(11):
                started = time.perf_counter()
                body = ask()
                times.append(time.perf_counter() - started)
                size = len(orjson.dumps(body))
            figures[f"{name}_ms"] = round(statistics.median(times) * 1000, 2)
            figures[f"{name}_kb"] = round(size / 1000, 1)
    return figures


def stall(url: str, pid: int, sim: NodeSim, seconds: float) -> dict[str, Any]:
    """The broker stopped (SIGSTOP) for `seconds` and resumed: the nodes it declared dead
    meanwhile (the goal is none), the stalls it counted, and the nodes that registered
    again, over two expiries after it resumed."""
    if not seconds:
        return {}
    before, registers = status(url), sim.stats()["registers_sent"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the stall itself
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(2 * before["heartbeat_interval"] * before["liveness"])
    after = status(url)

    def grew(name: str) -> int:
        return int(after["counters"].get(name, 0) - before["counters"].get(name, 0))

    return {
        "stall_s": seconds,
        "stall_declared_dead": grew("nodes_expired"),
        "stall_counted": grew("loop_stalls"),
        "stall_registered_again": sim.stats()["registers_sent"] - registers,
    }


def serial(client: Client, calls: int) -> dict[str, Any]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.execute("noop")
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "serial_p50_ms": round(times[len(times) // 2] * 1000, 3),
        "serial_p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
    }


def pipelined(client: Client, tasks: int, url: str) -> dict[str, Any]:
    before = completed_by_node(url)
    started = time.perf_counter()
    client.map("noop", [()] * tasks)
    seconds = time.perf_counter() - started
    after = completed_by_node(url)
    ran = sorted(after.get(node, 0) - before.get(node, 0) for node in after)
    return {
        "pipelined_tasks_s": round(tasks / seconds),
        "spread_share_used": round(sum(1 for n in ran if n) / len(ran), 3),
        "spread_min_median_max": [ran[0], statistics.median(ran), ran[-1]],
    }


def completed_by_node(url: str) -> dict[str, int]:
    with ReqLink(url, resend_interval=10.0) as link:
        nodes = ControlClient(link).nodes(timeout=30)
    return {node["id"]: node["completed"] for node in nodes}


def detection(url: str, sim: NodeSim, count: int, share: float) -> dict[str, Any]:
    silent = sim.freeze(max(1, round(count * share)))
    started = time.monotonic()
    wanted = count - len(silent)
    wait_for(lambda: status(url)["nodes_total"] <= wanted, 60, "the silent nodes dropped")
    return {"silent": len(silent), "detection_s": round(time.monotonic() - started, 2)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| nodes | all registered | REGISTERs per node | heartbeat interval | idle broker CPU "
        "| simulator CPU "
        "| broker RSS | RSS per node | STATUS (default / page of 500) | serial p50 / p99 "
        "| pipelined | nodes used, tasks per node min/median/max "
        "| stall: declared dead, registered again | 10 % silent found |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']:,} | {r['register_s']:.1f} s | {r['registers']} "
            f"| {r['heartbeat_interval']} s "
            f"| {r['idle_broker_cpu']:.0%} | {r['idle_sim_cpu']:.0%} | {r['rss_mib']} MiB "
            f"| {r['rss_per_node_kib']} KiB | {r['status_ms']} ms, {r['status_kb']} KB / "
            f"{r['status_page_ms']} ms, {r['status_page_kb']} KB "
            f"| {r['serial_p50_ms']} / {r['serial_p99_ms']} ms | {r['pipelined_tasks_s']:,}/s "
            f"| {r['spread_share_used']:.0%}, {r['spread_min_median_max']} "
            f"| {r.get('stall_declared_dead', '-')}, {r.get('stall_registered_again', '-')} "
            f"| {r['detection_s']} s |"
        )
    for r in rows:
        if "plateau_s" in r:
            first, last = r["plateau_rss_mib"]
            lines.append(
                f"\n{r['nodes']:,} nodes idle for {r['plateau_s']} s more: broker RSS {first} to "
                f"{last} MiB, {r['plateau_mib_per_hour']} MiB/h over all of it, "
                f"{r['plateau_last_third_mib_per_hour']} MiB/h over its last third"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
