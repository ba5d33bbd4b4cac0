"""The workload of tools/chaos.py and its verdict: the function its nodes run, the client
threads that submit it and check every answer, the count of executions from what the function
recorded, and the report that holds them against the kills.

Nodes load this module with `znode --functions chaos_tasks` (tools/ on their PYTHONPATH) and
offer only `record`. `record(i, delay)` first appends one line "i time pid" to a file of its
own process in the directory named by ZTB_CHAOS_DIR, so every execution that started is
counted, even one whose process is SIGKILLed a moment later: the line is one os.write on an
O_APPEND descriptor, which no other writer can split and a kill cannot undo once it returned.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client import Client, ClientError, TaskFailed

__all__ = ["record"]  # the only function nodes offer; the rest is for tools/chaos.py

DIR_VARIABLE = "ZTB_CHAOS_DIR"
SUFFIX = ".executions"

_fd: int | None = None


def expected(i: int) -> int:
    """What record(i, ...) returns: a value the client can check for each task."""
    return i * 3 + 1


def _descriptor() -> int:
    global _fd
    if _fd is None:
        directory = os.environ.get(DIR_VARIABLE)
        if not directory:
            raise RuntimeError(f"set {DIR_VARIABLE} to the directory executions are recorded in")
        path = Path(directory) / f"{os.getpid()}{SUFFIX}"
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def record(i: int, delay: float) -> int:
    """Note this execution of task i, hold its slot for `delay` seconds, return expected(i)."""
    os.write(_descriptor(), f"{i} {time.time():.6f} {os.getpid()}\n".encode())
    time.sleep(delay)
    return expected(i)


@dataclass(frozen=True, slots=True)
class Execution:
    task: int
    at: float  # time.time() when the function started
    pid: int


def read_executions(directory: Path) -> list[Execution]:
    """Every execution recorded in `directory`, oldest first."""
    executions = []
    for path in directory.glob(f"*{SUFFIX}"):
        for line in path.read_text().splitlines():
            task, at, pid = line.split()
            executions.append(Execution(int(task), float(at), int(pid)))
    return sorted(executions, key=lambda e: e.at)


def superseded(executions: list[Execution]) -> tuple[int, list[Execution]]:
    """How many tasks ran at all, and the executions of a task that a later execution of
    the same task followed: one per duplicate."""
    runs: dict[int, list[Execution]] = {}
    for execution in executions:  # oldest first
        runs.setdefault(execution.task, []).append(execution)
    return len(runs), [run for task_runs in runs.values() for run in task_runs[:-1]]


class Tally:
    """The answers the client threads got, each checked against expected(i)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered = self.ok = self.lost = 0
        self.failed: list[str] = []
        self.failures: Counter[str] = Counter()  # by exit code and exception type
        self.wrong: list[str] = []
        self.gave_up: list[str] = []

    def add(self, i: int, result: Any) -> None:
        with self.lock:
            self.answered += 1
            if isinstance(result, Exception):
                self._failed(i, result)
            elif result == expected(i):
                self.ok += 1
            else:
                self.wrong.append(f"task {i} returned {result!r}, not {expected(i)}")

    def _failed(self, i: int, exc: Exception) -> None:
        if isinstance(exc, TaskFailed):
            kind = f"exit {exc.exit_code} {exc.error_type}"
            message = f"task {i} (id {exc.task_id}, {kind}, {exc.attempts} attempts): {exc.message}"
        else:
            kind = type(exc).__name__
            message = f"task {i} ({kind}): {exc}"
        self.failures[kind] += 1
        self.failed.append(message)

    def give_up(self, unanswered: list[int], exc: Exception) -> None:
        with self.lock:
            self.lost += len(unanswered)
            self.gave_up.append(f"{len(unanswered)} tasks unanswered from {unanswered[0]}: {exc}")


def submit(url: str, indices: list[int], args: argparse.Namespace, tally: Tally) -> None:
    """One client thread: imap over its share of the tasks, every answer into the tally."""
    answered = 0
    try:
        with Client(url, timeout=args.timeout, resend_interval=args.resend_interval) as client:
            calls = [(i, args.delay) for i in indices]
            results = client.imap("record", calls, window=args.window, return_exceptions=True)
            for i, result in zip(indices, results, strict=False):
                tally.add(i, result)
                answered += 1
    except ClientError as exc:  # nothing heard for --timeout s: the rest are lost
        tally.give_up(indices[answered:], exc)


@dataclass
class Kill:
    kind: str  # "process" (one node process), "znode" (supervisor and processes), "broker"
    target: str
    pids: list[int]
    # Nodes: tasks running on what was killed, by the broker's STATUS. The broker: set by
    # broker_in_flight, see IN_FLIGHT_RULE.
    in_flight: int = 0
    at: float = field(default_factory=time.time)
    # The broker: when its replacement listened. Until then a node may still start a task from
    # a RUN the killed broker had sent (seen up to 8 ms after the SIGKILL).
    until: float = 0.0
    duplicates: int = 0  # superseded executions charged to this kill
    note: str = ""
    running: int | None = None  # the broker: STATUS `running` just before the kill
    pending: frozenset[int] | None = None  # the broker: tasks pending in its store after it
    started_after_kill: int | None = None  # the broker: in_flight tasks that started after it
    not_pending: int | None = None  # the broker: its duplicates of tasks its store did not hold


IN_FLIGHT_RULE = (
    "in flight at a node kill: tasks running on it by the broker's STATUS; at the broker kill: "
    "tasks that had started (by the record files, before its replacement listened) and "
    "were still pending in its store, read after the kill"
)


def broker_in_flight(kills: list[Kill], executions: list[Execution]) -> None:
    """Set in_flight of each broker kill: tasks it had sent to run that its store still held,
    so that the restarted broker runs them again (group commit: also those answered in the
    last milliseconds before the kill, not only those running). Call it before charge, which
    counts not_pending."""
    for kill in kills:
        if kill.pending is None:
            continue
        started = {e.task for e in executions if e.at <= max(kill.at, kill.until)}
        before = {e.task for e in executions if e.at <= kill.at}
        in_flight = started & kill.pending
        kill.in_flight = len(in_flight)
        kill.started_after_kill = len(in_flight - before)
        kill.not_pending = 0


def charge(extra: list[Execution], kills: list[Kill]) -> int:
    """Charge each superseded execution to the first kill of its process after it started,
    or of the broker before its replacement listened; returns how many no kill explains."""
    unexplained = 0
    for run in extra:
        causes = (
            k
            for k in kills
            if max(k.at, k.until) >= run.at and (k.kind == "broker" or run.pid in k.pids)
        )
        cause = next(causes, None)
        if cause is None:
            unexplained += 1
        else:
            cause.duplicates += 1
            if cause.pending is not None and run.task not in cause.pending:
                cause.not_pending = (cause.not_pending or 0) + 1
    return unexplained


def kill_report(kill: Kill, started: float) -> dict[str, Any]:
    """The kill as the report shows it: times since `started`, the count of pending tasks."""
    figures = asdict(kill)
    pending = figures.pop("pending")
    return figures | {
        "at": round(kill.at - started, 3),
        "until": round(max(kill.until, kill.at) - started, 3),
        "pending_in_store": None if pending is None else len(pending),
    }


def analyse(
    args: argparse.Namespace, tally: Tally, kills: list[Kill], wall: float
) -> dict[str, Any]:
    """The figures of the run, the promises it broke, and notes on what looks off."""
    executions = read_executions(args.records)
    ran, extra = superseded(executions)
    broker_in_flight(kills, executions)
    unexplained = charge(extra, kills)
    report: dict[str, Any] = {
        "tasks": args.tasks,
        "ok": tally.ok,
        "lost": tally.lost,
        "failed": len(tally.failed),
        "wrong": len(tally.wrong),
        "executions": len(executions),
        "never_executed": args.tasks - ran,
        "duplicates": len(extra),
        **kill_figures(kills),
        "unexplained_duplicates": unexplained,
        "wall_seconds": round(wall, 2),
        "tasks_per_second": round(args.tasks / wall),
        "seed": args.seed,
        "started_at": args.started,  # time.time(); kill times below count from it
        "kills": [kill_report(k, args.started) for k in kills],
        "failures": dict(tally.failures),
        "samples": (tally.gave_up + tally.failed + tally.wrong)[:20],
    }
    return report | verdict(report, kills)


def kill_figures(kills: list[Kill]) -> dict[str, Any]:
    brokers = [k for k in kills if k.kind == "broker"]
    in_flight = sum(k.in_flight for k in kills)
    return {
        "in_flight_at_kills": in_flight,  # the bound on duplicates
        "in_flight_at_node_kills": in_flight - sum(k.in_flight for k in brokers),
        "broker_kill_running": sum(k.running or 0 for k in brokers),
        "broker_kill_in_flight": sum(k.in_flight for k in brokers),
        "in_flight_rule": IN_FLIGHT_RULE,
        "node_kills": len(kills) - len(brokers),
        "broker_kills": len(brokers),
    }


def verdict(report: dict[str, Any], kills: list[Kill]) -> dict[str, list[str]]:
    """The promises the run broke, and notes on kills charged more than they had in flight."""
    broken = [f"{report[key]} {key}" for key in ("lost", "failed", "wrong") if report[key]]
    duplicates, in_flight = report["duplicates"], report["in_flight_at_kills"]
    if duplicates > in_flight:
        broken.append(f"{duplicates} duplicate executions > {in_flight} tasks in flight at kills")
    notes = [
        f"{k.kind} {k.target}: {k.duplicates} duplicates > {k.in_flight} in flight"
        for k in kills
        if k.duplicates > k.in_flight
    ]
    notes += [
        f"{k.kind}: {k.not_pending} duplicates of tasks its store did not hold at the kill "
        "(accepted and started in its last milliseconds?)"
        for k in kills
        if k.not_pending
    ]
    unexplained = report["unexplained_duplicates"]
    notes += [f"{unexplained} duplicates no kill explains"] if unexplained else []
    return {"broken": broken, "notes": notes}
