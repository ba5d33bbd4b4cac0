"""Tasks keep flowing while nodes are SIGKILLed and the broker is killed and restarted: every
task must come back right, and no task may run more often than the kills explain.

    .venv/bin/python tools/chaos.py [--tasks 20000] [--nodes 3] [--concurrency 2] [--json]

Starts `zbroker start` (a store in the run's directory, heartbeats every 0.2 s x 3) and
--nodes `znode --functions chaos` through client.cluster.LocalCluster, as a user would; the
nodes load this very file as their function set (tools/ on their PYTHONPATH), which offers
only `record`. --clients threads submit `record(i, delay)` with Client.imap (resending after
--resend-interval s of silence); each execution appends a line to a file of its process,
sleeps --delay s and returns 3i + 1. Every --kill-interval s a node process is SIGKILLed (its
supervisor restarts it; the broker fails its tasks as WorkerCrashed and retries them) or,
with probability --znode-share, a whole znode (a fresh one replaces it; heartbeats tell the
broker). Once --broker-kill-at of the tasks are answered, the broker is SIGKILLed and
restarted on the same store and address.

Tasks in flight at a node kill: those running on what dies, by the broker's STATUS around the
kill, and per process as many more as it has slots: the tasks it holds unstarted
(protocol.md 5.5) never run there, but a slot that freed may have started the next one in
the milliseconds before its RESULT reached the broker. At the broker kill: those that had
started (a line in the record files from before the new broker listened: a RUN the killed
one sent may start a few ms after the kill) and that its store still held as pending, read
(read-only) between the kill and the restart. The broker commits its changes at most 5 ms
late (protocol.md 5.2), so a task answered in those last milliseconds is still pending and
runs again: at least once, by design. Its STATUS
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
import contextlib
import fcntl
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from broker.protocol import TaskSpec, loads_payload
from broker.store.persistence import WRITER_GRACE, take_lock
from client import BrokerTimeout, BrokerUnreachable, Client, ClientError, TaskFailed
from client.cluster import LocalCluster, Process

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["record"]  # the only function nodes offer; the rest is the tool

TOOLS = Path(__file__).resolve().parent
DIR_VARIABLE = "ZTB_CHAOS_DIR"
SUFFIX = ".executions"

# =============================================================================== the workload
#
# `record(i, delay)` first appends one line "i time pid" to a file of its own process in the
# directory named by ZTB_CHAOS_DIR, so every execution that started is counted, even one
# whose process is SIGKILLed a moment later: the line is one os.write on an O_APPEND
# descriptor, which no other writer can split and a kill cannot undo once it returned.

_fd: int | None = None


def expected(i: int) -> int:
    """What record(i, ...) returns: a value the client can check for each task."""
    return i * 3 + 1


def execution_log(variable: str = DIR_VARIABLE) -> int:
    """This process's file of executions (opened once, O_APPEND: one write a line, which
    no other writer splits and a kill cannot undo once it returned), in the directory the
    environment variable `variable` names (tools/soak.py names its own)."""
    global _fd
    if _fd is None:
        directory = os.environ.get(variable)
        if not directory:
            raise RuntimeError(f"set {variable} to the directory executions are recorded in")
        path = Path(directory) / f"{os.getpid()}{SUFFIX}"
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def record(i: int, delay: float) -> int:
    """Note this execution of task i, hold its slot for `delay` seconds, return expected(i)."""
    os.write(execution_log(), f"{i} {time.time():.6f} {os.getpid()}\n".encode())
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


# ================================================================================ the clients


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


# ================================================================================== the kills


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


class SetupFailed(Exception):
    """The run could not be carried out; the message says what failed."""


class ChaosCluster(LocalCluster):
    """The run's broker and znodes, started through the project's cluster launcher with the
    run's settings. The broker started again after its kill listens on the same address and
    opens the same store (LocalCluster keeps both)."""

    def __init__(self, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(workdir, log_level="INFO", env=env)
        self.args = args
        self.znodes: dict[str, Process] = {}  # the live znodes (supervisors), by name
        self.znodes_started = 0

    def start_broker(
        self, *args: str, bind: str = "tcp://127.0.0.1:0", store: str | Path | None = None
    ) -> Process:
        a = self.args
        run = ["--drain-timeout", "2", "--retries", str(a.retries)]
        run += ["--heartbeat-interval", str(a.heartbeat_interval), "--liveness", str(a.liveness)]
        run += ["--retry-backoff", str(a.retry_backoff)]
        return super().start_broker(*run, *args, bind=bind, store=store)

    def start_znode(self) -> None:
        self.znodes_started += 1
        name = f"chaos{self.znodes_started}"
        concurrency = self.args.concurrency
        self.znodes[name] = self.start_node(functions=["chaos"], concurrency=concurrency, name=name)

    def pending_in_store(self) -> frozenset[int]:
        """The numbers of the tasks the store holds as pending (queued or running). Call it
        only while no broker runs: it reads what the killed broker had committed, once its
        store writer has written what it was given (it holds the store's lock until then)."""
        try:
            wait_for_writer(self.store)
            rows = read_tasks(self.store)
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise SetupFailed(f"cannot read the killed broker's store {self.store}: {exc}") from exc
        return frozenset(task_number(task_id, args, self.args.clients) for task_id, args in rows)


def wait_for_writer(store: Path) -> None:
    """Wait until nothing holds the store's lock file: the writer of a killed broker finishes
    what it was given, then exits (as a starting broker waits). Raises SetupFailed if it
    does not."""
    with open(f"{store}.lock", "a+") as handle:
        if not take_lock(handle, str(store)):
            raise SetupFailed(
                f"the store {store} was still locked {WRITER_GRACE:.0f} s after its broker "
                "was killed (its writer did not finish)"
            )
        fcntl.flock(handle, fcntl.LOCK_UN)


def read_tasks(store: Path) -> list[tuple[str, bytes]]:
    """(task_id, arguments) of every row of the store's `tasks` table, read without writing.

    mode=ro: a read-only connection never checkpoints, so the file and its WAL stay as the
    broker left them, and it still reads the WAL, where the last commits are. The broker keeps
    its WAL index in memory (EXCLUSIVE locking), so SQLite creates a -shm file to read the WAL;
    it is removed again so the store's directory looks as the broker left it. Each row keeps
    its task's TaskSpec whole, MessagePack-encoded (broker/store/schema.py)."""
    shm = store.with_name(store.name + "-shm")
    had_shm = shm.exists()
    conn = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows: list[tuple[str, bytes]] = conn.execute("SELECT task_id, spec FROM tasks").fetchall()
    finally:
        conn.close()
        if not had_shm:
            shm.unlink(missing_ok=True)
    return [(task_id, msgspec.msgpack.decode(spec, type=TaskSpec).args) for task_id, spec in rows]


def task_number(task_id: str, args: bytes, clients: int) -> int:
    """The i of a stored task `record(i, delay)`. Its arguments give i; its id, which
    Client.imap makes "<prefix>.<position in its client's share>", must agree (client c of
    `clients` submits i = c, c + clients, ...), or the store holds something else."""
    arguments = loads_payload(args)
    i = arguments[0] if isinstance(arguments, list) and arguments else None
    if not isinstance(i, int) or task_id.rpartition(".")[2] != str(i // clients):
        raise SetupFailed(f"the store holds task {task_id} {arguments!r}, not one of this run")
    return i


class Chaos(threading.Thread):
    """Kills a node every few seconds, and the broker once, until `done` is set."""

    def __init__(
        self,
        cluster: ChaosCluster,
        args: argparse.Namespace,
        tally: Tally,
        say: Callable[[str], None],
    ) -> None:
        super().__init__(daemon=True, name="chaos")
        self.cluster, self.args, self.tally, self.say = cluster, args, tally, say
        self.rng = random.Random(args.seed)
        self.kills: list[Kill] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the main thread reports it and ends the run
            self.error = exc

    def _loop(self) -> None:
        low, high = self.args.kill_interval
        next_kill = time.monotonic() + self.rng.uniform(low, high)
        broker_due = self.args.broker_kill_at > 0
        while not self.done.wait(0.02):
            if broker_due and self.tally.answered >= self.args.broker_kill_at * self.args.tasks:
                broker_due = False
                self._kill_broker()
            elif time.monotonic() >= next_kill:
                self._kill_node()
                next_kill = time.monotonic() + self.rng.uniform(low, high)

    def _kill_node(self) -> None:
        try:
            before = self.cluster.status()
        except (BrokerTimeout, BrokerUnreachable):
            self.say("no STATUS from the broker: this node kill is skipped")
            return
        name = self.rng.choice(sorted(self.cluster.znodes))
        supervisor = self.cluster.znodes[name]
        children = list(children_of({supervisor.pid}))
        if self.rng.random() < self.args.znode_share:
            kill = self._kill_znode(name, supervisor, children)
        else:
            candidates = [n for n in before["nodes"] if n["pid"] in children]
            if not candidates:
                return  # its processes are being restarted; try again at the next kill
            node = self.rng.choice(candidates)
            kill = Kill("process", node["name"], [node["pid"]])
            os.kill(node["pid"], signal.SIGKILL)
            kill.at = time.time()  # after: a task may start between STATUS and the signal
        # Before or after: a RUN may have been on its way; take the higher count.
        kill.in_flight = running_on(before, kill.pids)
        with contextlib.suppress(BrokerTimeout, BrokerUnreachable):
            kill.in_flight = max(kill.in_flight, running_on(self.cluster.status(), kill.pids))
        self.kills.append(kill)
        self.say(f"SIGKILL {kill.kind} {kill.target} {kill.pids}: {kill.in_flight} in flight")

    def _kill_znode(self, name: str, supervisor: Process, children: list[int]) -> Kill:
        """SIGKILL a supervisor and its node processes, and start a fresh znode."""
        kill = Kill("znode", name, [supervisor.pid, *children])
        for pid in kill.pids:  # its processes would follow it; make it one instant
            os.kill(pid, signal.SIGKILL)
        kill.at = time.time()
        supervisor.wait(timeout=10)
        del self.cluster.znodes[name]
        self.cluster.start_znode()
        return kill

    def _kill_broker(self) -> None:
        """SIGKILL the broker, read which tasks its store still holds, start a new one."""
        cluster, before = self.cluster, self.cluster.status()
        broker = cluster.broker
        assert broker is not None
        kill = Kill("broker", "zbroker", [broker.pid], running=before["running"])
        broker.signal(signal.SIGKILL)
        kill.at = time.time()
        broker.wait(timeout=10)  # its locks on the store go with it
        kill.pending = cluster.pending_in_store()
        self.kills.append(kill)
        cluster.start_broker(bind=cluster.url)  # the same address; the store is kept
        kill.until = cluster.listening_since  # from then on a RUN may come from the new one
        kill.note = (
            f"{before['queued']} queued, {before.get('waiting_retry', 0)} waiting to retry; "
            f"listening again {kill.until - kill.at:.2f} s after the kill"
        )
        self.say(
            f"SIGKILL broker {kill.pids}: {kill.running} running, {len(kill.pending)} "
            f"pending in its store, {kill.note}"
        )


def children_of(parents: set[int]) -> dict[int, int]:
    """The live processes whose parent is one of `parents`, each with its parent (Linux
    /proc, one pass)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # it ended while we looked
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) in parents and state != "Z":
                found[int(entry)] = int(ppid)
    return found


def running_on(body: dict[str, Any], pids: list[int]) -> int:
    """Tasks those processes may have started: what the broker counts as running on each,
    and one more per slot (its RESULT may not have reached the broker yet, nor the next
    task's start), at most what it was sent. Held tasks never started there: not counted."""
    total = 0
    for node in body["nodes"]:
        if node["pid"] in pids:
            active, held = int(node["active"]), int(node.get("held", 0))
            total += min(active, active - held + int(node["capacity"]))
    return total


# ================================================================================ the verdict

IN_FLIGHT_RULE = (
    "in flight at a node kill: tasks running on it by the broker's STATUS, plus one per slot "
    "if it held more (a task may start before the broker hears); at the broker kill: "
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


# ==================================================================================== the run
#
# rich is imported where the display needs it: nodes import this module for `record` alone.


def watch(threads: list[threading.Thread], chaos: Chaos, total: int, console: Console) -> None:
    """Show progress until the client threads are done (a bar on a terminal, else a line
    every 5 s); stop early if the chaos thread failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    env = {"PYTHONPATH": path, DIR_VARIABLE: str(args.records)}
    cluster = ChaosCluster(args, workdir, env)
    chaos = Chaos(cluster, args, Tally(), console.log)
    try:
        cluster.start_broker()
        for _ in range(args.nodes):
            cluster.start_znode()
        cluster.wait_for_nodes(args.nodes * args.concurrency)
        # Client c submits i = c, c + clients, ...: task_number relies on it.
        shares = [list(range(c, args.tasks, args.clients)) for c in range(args.clients)]
        clients = [
            threading.Thread(
                target=submit, args=(cluster.url, share, args, chaos.tally), daemon=True
            )
            for share in shares
        ]
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
        cluster.close()
    # The restarted broker's counters (they start at 0), for the record.
    return analyse(args, chaos.tally, chaos.kills, wall) | {"broker_counters": counters}


FIGURES = ["tasks", "ok", "lost", "failed", "wrong", "executions", "duplicates"]
FIGURES += ["in_flight_at_kills", "in_flight_at_node_kills", "broker_kill_running"]
FIGURES += ["broker_kill_in_flight", "unexplained_duplicates", "node_kills", "broker_kills"]
FIGURES += ["wall_seconds", "tasks_per_second", "seed"]
COLUMNS = ["t", "kind", "target", "pids", "running", "in store", "in flight"]


def print_report(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

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
    serve_run(parse_args(), "ztb-chaos-", run, print_report)


def serve_run(
    args: argparse.Namespace,
    prefix: str,
    run: Callable[[argparse.Namespace, Path, Console], dict[str, Any]],
    print_report: Callable[[dict[str, Any], Console], None],
) -> None:
    """Carry out one run of a tool (this one, tools/soak.py) in a fresh directory named
    `prefix`...: exit 0 if every promise held, 1 if one broke, 2 if the run could not be
    carried out, 130 on Ctrl-C or SIGTERM (every process stopped in each case); the
    directory is kept with --keep-dir or when a promise broke."""
    from rich.console import Console

    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=True, log_path=False)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report = run(args, workdir, console)
    except (SetupFailed, ClientError) as exc:  # ClusterError, BrokerTimeout among them
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
