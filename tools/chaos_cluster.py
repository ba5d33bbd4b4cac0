"""The processes of tools/chaos.py and the kills among them: the broker and the znodes, each
started through its CLI with a log file, the thread that SIGKILLs them, and the look into the
killed broker's store that tells which tasks were still pending when it died.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_tasks import Kill, Tally

from broker.control import BrokerUnreachable, status
from broker.protocol import loads_payload

BIN = Path(sys.executable).parent
Popen = subprocess.Popen[bytes]


class SetupFailed(Exception):
    """The run could not be carried out; the message says what failed."""


class Cluster:
    """The broker and the znodes of the run, each started through its CLI with a log file."""

    def __init__(self, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> None:
        self.args, self.workdir, self.env = args, workdir, env
        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.store = workdir / "broker.sqlite3"
        self.procs: list[Popen] = []
        self.broker: Popen | None = None
        self.znodes: dict[str, Popen] = {}
        self.started = {"zbroker": 0, "znode": 0}

    def _start(self, program: str, *argv: str) -> Popen:
        self.started[program] += 1
        with (self.workdir / f"{program}-{self.started[program]}.log").open("ab") as log:
            command = [str(BIN / program), *argv]
            proc = subprocess.Popen(command, stdout=log, stderr=log, env=self.env)
        self.procs.append(proc)
        return proc

    def start_broker(self) -> float:
        """`zbroker start` on the run's store and address; returns once it listens, with the
        time.time() it started listening (it writes --ready-file then, before it serves)."""
        a, ready = self.args, self.workdir / f"broker-{self.started['zbroker'] + 1}.endpoint"
        argv = ["start", "--bind", self.url, "--store", str(self.store)]
        argv += ["--ready-file", str(ready), "--drain-timeout", "2", "--retries", str(a.retries)]
        argv += ["--heartbeat-interval", str(a.heartbeat_interval), "--liveness", str(a.liveness)]
        self.broker = self._start("zbroker", *argv, "--retry-backoff", str(a.retry_backoff))
        self._wait(lambda: ready.exists() and ready.read_text().strip(), "the broker to listen")
        return min(ready.stat().st_mtime, time.time())

    def start_znode(self) -> None:
        name = f"chaos{self.started['znode'] + 1}"
        argv = ["--broker", self.url, "--functions", "chaos_tasks", "--name", name]
        argv += ["--concurrency", str(self.args.concurrency)]
        self.znodes[name] = self._start("znode", *argv)

    def wait_registered(self, count: int) -> None:
        def registered() -> bool:
            with contextlib.suppress(BrokerUnreachable):
                return len(self.status()["nodes"]) >= count
            return False

        self._wait(registered, f"{count} node processes to register")

    def _wait(self, ready: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            if self.broker is not None and self.broker.poll() is not None:
                raise SetupFailed(f"zbroker exited with {self.broker.returncode} before {what}")
            if time.monotonic() > deadline:
                raise SetupFailed(f"timed out after 30 s waiting for {what}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return status(self.url, timeout=2.0)

    def pending_in_store(self) -> frozenset[int]:
        """The numbers of the tasks the store holds as pending (queued or running). Call it
        only while no broker runs: it reads what the killed broker had committed."""
        try:
            rows = read_tasks(self.store)
        except sqlite3.Error as exc:
            raise SetupFailed(f"cannot read the killed broker's store {self.store}: {exc}") from exc
        return frozenset(
            task_number(task_id, payload, self.args.clients) for task_id, payload in rows
        )

    def stop(self) -> None:
        """SIGTERM to every process still running, SIGKILL to those that outstay 10 s."""
        alive = [proc for proc in self.procs if proc.poll() is None]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in alive:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_tasks(store: Path) -> list[tuple[str, bytes]]:
    """(task_id, arguments) of every row of the store's `tasks` table, read without writing.

    mode=ro: a read-only connection never checkpoints, so the file and its WAL stay as the
    broker left them, and it still reads the WAL, where the last commits are. The broker keeps
    its WAL index in memory (EXCLUSIVE locking), so SQLite creates a -shm file to read the WAL;
    it is removed again so the store's directory looks as the broker left it."""
    shm = store.with_name(store.name + "-shm")
    had_shm = shm.exists()
    conn = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows: list[tuple[str, bytes]] = conn.execute(
            "SELECT task_id, payload FROM tasks"
        ).fetchall()
    finally:
        conn.close()
        if not had_shm:
            shm.unlink(missing_ok=True)
    return rows


def task_number(task_id: str, payload: bytes, clients: int) -> int:
    """The i of a stored task `record(i, delay)`. Its arguments give i; its id, which
    Client.imap makes "<prefix>.<position in its client's share>", must agree (client c of
    `clients` submits i = c, c + clients, ...), or the store holds something else."""
    arguments = loads_payload(payload)
    i = arguments[0] if isinstance(arguments, list) and arguments else None
    if not isinstance(i, int) or task_id.rpartition(".")[2] != str(i // clients):
        raise SetupFailed(f"the store holds task {task_id} {arguments!r}, not one of this run")
    return i


class Chaos(threading.Thread):
    """Kills a node every few seconds, and the broker once, until `done` is set."""

    def __init__(self, cluster: Cluster, args: argparse.Namespace, tally: Tally, say: Any):
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
        except BrokerUnreachable:
            self.say("no STATUS from the broker: this node kill is skipped")
            return
        name = self.rng.choice(sorted(self.cluster.znodes))
        supervisor = self.cluster.znodes[name]
        children = child_pids(supervisor.pid)
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
        with contextlib.suppress(BrokerUnreachable):
            kill.in_flight = max(kill.in_flight, running_on(self.cluster.status(), kill.pids))
        self.kills.append(kill)
        self.say(f"SIGKILL {kill.kind} {kill.target} {kill.pids}: {kill.in_flight} in flight")

    def _kill_znode(self, name: str, supervisor: Popen, children: list[int]) -> Kill:
        """SIGKILL a supervisor and its node processes, and start a fresh znode."""
        kill = Kill("znode", name, [supervisor.pid, *children])
        for pid in kill.pids:  # its processes would follow it; make it one instant
            os.kill(pid, signal.SIGKILL)
        kill.at = time.time()
        supervisor.wait()
        del self.cluster.znodes[name]
        self.cluster.start_znode()
        return kill

    def _kill_broker(self) -> None:
        """SIGKILL the broker, read which tasks its store still holds, start a new one."""
        cluster, before = self.cluster, self.cluster.status()
        assert cluster.broker is not None
        kill = Kill("broker", "zbroker", [cluster.broker.pid], running=before["running"])
        os.kill(cluster.broker.pid, signal.SIGKILL)
        kill.at = time.time()
        cluster.broker.wait()  # its locks on the store go with it
        kill.pending = cluster.pending_in_store()
        self.kills.append(kill)
        kill.until = cluster.start_broker()  # from then on a RUN may come from the new broker
        kill.note = (
            f"{before['queued']} queued, {before.get('waiting_retry', 0)} waiting to retry; "
            f"listening again {kill.until - kill.at:.2f} s after the kill"
        )
        self.say(
            f"SIGKILL broker {kill.pids}: {kill.running} running, {len(kill.pending)} "
            f"pending in its store, {kill.note}"
        )


def child_pids(parent: int) -> list[int]:
    """The live processes whose parent is `parent` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # it ended while we looked
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z":
                found.append(int(entry))
    return found


def running_on(body: dict[str, Any], pids: list[int]) -> int:
    return sum(int(node["active"]) for node in body["nodes"] if node["pid"] in pids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
