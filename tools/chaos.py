"""Tasks keep flowing while nodes are SIGKILLed and the broker is killed and restarted: every
task must come back right, and no task may run more often than the kills explain.

    .venv/bin/python tools/chaos.py [--tasks 20000] [--nodes 3] [--concurrency 2] [--json]

Starts `zbroker start` (a store in a temporary directory, a fixed port so the restarted broker
has the same URL, heartbeats every 0.2 s x 3) and --nodes `znode --functions chaos_tasks`, as
a user would. --clients threads submit `record(i, delay)` with Client.imap (resending after
--resend-interval s of silence); each execution appends a line to a file of its process,
sleeps --delay s and returns 3i + 1 (tools/chaos_tasks.py). Every --kill-interval s a node
process is SIGKILLed (its supervisor restarts it; the broker fails its tasks as WorkerCrashed
and retries them) or, with probability --znode-share, a whole znode (a fresh one replaces it;
heartbeats tell the broker). Once --broker-kill-at of the tasks are answered, the broker is
SIGKILLed and restarted on the same store and address.

Tasks in flight at a node kill: those running on what dies, by the broker's STATUS around the
kill. At the broker kill: those that had started (a line in the record files from before the
new broker listened: a RUN the killed one sent may start a few ms after the kill) and that
its store still held as pending, read (read-only) between the kill and the restart. The
broker commits its changes at most 5 ms late (protocol.md 5.2), so a task answered in those
last milliseconds is still pending and runs again: at least once, by design. Its STATUS
`running` just before the kill is reported too, not used.

Promises, exit status 1 if one is broken: no task lost (unanswered when a client heard nothing
for --timeout s), failed (answered with a failure) or wrong (not 3i + 1); duplicates (runs
beyond one per task, from the record files) no more than the tasks in flight at all kills.
Each duplicate is charged to the kill that explains it (of its process after it started, or
of the broker before its replacement listened); notes list kills charged more than they had
in flight.
Exit status 2 if the run could not be carried out, 130 after Ctrl-C or SIGTERM; every process
started is stopped in any case. Logs, store and record files are kept with --keep-dir or when
a promise is broken.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from chaos_cluster import Chaos, Cluster, SetupFailed
from chaos_tasks import DIR_VARIABLE, IN_FLIGHT_RULE, Tally, analyse, submit
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.control import BrokerUnreachable

TOOLS = Path(__file__).resolve().parent


def watch(threads: list[threading.Thread], chaos: Chaos, total: int, console: Console) -> None:
    """Show progress until the client threads are done (a bar on a terminal, else a line
    every 5 s); stop early if the chaos thread failed."""
    tally, last_line = chaos.tally, time.monotonic()
    columns = [TextColumn("answered"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("", total=total)
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(0.25)
            if chaos.error is not None:
                raise SetupFailed(f"the chaos thread failed: {chaos.error!r}")
            kills = f"{len(chaos.kills)} kills"
            bar.update(task, completed=tally.answered, description=kills)
            if not console.is_terminal and time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                console.log(f"{tally.answered:,}/{total:,} answered, {kills}")


def run(args: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    """Start the cluster, submit the tasks under chaos, stop everything, judge the run."""
    args.records = workdir / "executions"
    args.records.mkdir()
    path = os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, DIR_VARIABLE: str(args.records)}
    cluster = Cluster(args, workdir, env)
    chaos = Chaos(cluster, args, Tally(), console.log)
    # Client c submits i = c, c + clients, ...: chaos_cluster.task_number relies on it.
    shares = [list(range(c, args.tasks, args.clients)) for c in range(args.clients)]
    clients = [
        threading.Thread(target=submit, args=(cluster.url, share, args, chaos.tally), daemon=True)
        for share in shares
    ]
    try:
        cluster.start_broker()
        for _ in range(args.nodes):
            cluster.start_znode()
        cluster.wait_registered(args.nodes * args.concurrency)
        args.started = time.time()
        for thread in [*clients, chaos]:
            thread.start()
        watch(clients, chaos, args.tasks, console)
        wall = time.time() - args.started
        chaos.done.set()
        chaos.join()  # a broker restart under way ends before the last STATUS
        counters = cluster.status()["counters"]
    finally:
        chaos.done.set()
        if chaos.is_alive():
            chaos.join(60)
        cluster.stop()
    # The restarted broker's counters (they start at 0), for the record.
    return analyse(args, chaos.tally, chaos.kills, wall) | {"broker_counters": counters}


FIGURES = ["tasks", "ok", "lost", "failed", "wrong", "executions", "duplicates"]
FIGURES += ["in_flight_at_kills", "in_flight_at_node_kills", "broker_kill_running"]
FIGURES += ["broker_kill_in_flight", "unexplained_duplicates", "node_kills", "broker_kills"]
FIGURES += ["wall_seconds", "tasks_per_second", "seed"]
COLUMNS = ["t", "kind", "target", "pids", "running", "in store", "in flight"]


def print_report(report: dict[str, Any], console: Console) -> None:
    kills = Table(title="Kills (t: seconds since the first task)")
    for column in [*COLUMNS, "duplicates"]:
        kills.add_column(column, justify="left" if column in ("kind", "target") else "right")
    for k in report["kills"]:
        pids = ",".join(map(str, k["pids"]))
        broker = [str(k["running"]), str(k["pending_in_store"])] if k["kind"] == "broker" else []
        cells = (*(broker or ["", ""]), str(k["in_flight"]), str(k["duplicates"]))
        kills.add_row(f"{k['at']:.1f}", k["kind"], k["target"], pids, *cells)
    summary = Table(title="Chaos run", show_header=False)
    for key in FIGURES:
        summary.add_row(key.replace("_", " "), f"{report[key]:,}")
    console.print(kills, summary)
    console.print(f"  {report['in_flight_rule']}")
    notes = [f"{k['kind']} at {k['at']:.1f} s: {k['note']}" for k in report["kills"] if k["note"]]
    for line in notes + report["samples"][:5] + report["notes"]:
        console.print(f"  {line}", style="yellow")
    outcome = "; ".join(report["broken"]) or "every promise held"
    console.print(outcome, style="bold red" if report["broken"] else "bold green")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: every process is stopped


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=True, log_path=False)
    workdir = Path(tempfile.mkdtemp(prefix="ztb-chaos-"))
    try:
        report = run(args, workdir, console)
    except (SetupFailed, BrokerUnreachable) as exc:
        console.print(f"error: {exc}; the logs are in {workdir}", style="bold red")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print(f"interrupted; every process was stopped; the logs are in {workdir}")
        sys.exit(130)
    if args.keep_dir or report["broken"]:
        report["dir"] = str(workdir)
        console.print(f"the logs, store and record files are kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(report, Console())
    sys.exit(1 if report["broken"] else 0)


OPTIONS: list[tuple[str, type, Any, str]] = [
    ("--tasks", int, 20_000, "tasks to run"),
    ("--nodes", int, 3, "znode supervisors"),
    ("--concurrency", int, 2, "node processes per znode, one slot each"),
    ("--clients", int, 2, "client threads submitting, each with its own Client"),
    ("--window", int, 500, "tasks in flight per client"),
    ("--delay", float, 0.005, "seconds each task sleeps, so tasks are in flight at kills"),
    ("--znode-share", float, 0.3, "share of node kills that kill a whole znode"),
    ("--broker-kill-at", float, 0.5, "kill the broker once this share is answered; 0: never"),
    ("--heartbeat-interval", float, 0.2, "zbroker start --heartbeat-interval"),
    ("--liveness", int, 3, "zbroker start --liveness"),
    ("--retries", int, 10, "zbroker start --retries: extra attempts per task"),
    ("--retry-backoff", float, 0.05, "zbroker start --retry-backoff"),
    ("--resend-interval", float, 0.5, "seconds of silence after which a client resends"),
    ("--timeout", float, 120.0, "seconds of silence after which a client gives up (lost)"),
    ("--seed", int, None, "seed of the kills (default: random; the report shows it)"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=f"In short: {IN_FLIGHT_RULE}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    for flag, kind, default, text in OPTIONS:
        text += "" if default is None else f" (default {default})"
        add(flag, type=kind, default=default, metavar="N" if kind is int else "X", help=text)
    pair: dict[str, Any] = {"nargs": 2, "metavar": ("LOW", "HIGH"), "type": float}
    text = "seconds between node kills, random from LOW to HIGH (default 1 4)"
    add("--kill-interval", **pair, default=[1.0, 4.0], help=text)
    add("--json", action="store_true", help="print the report as JSON on stdout")
    add("--keep-dir", action="store_true", help="keep the logs, store and record files")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


if __name__ == "__main__":
    main()
