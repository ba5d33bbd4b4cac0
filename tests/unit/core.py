"""A Scheduler driven as the server drives it, for the scenario tests of the core: each
message becomes a `Received` event, followed by `Sent` (the deferred bookkeeping), and the
invariants are checked after every step. Store changes are collected in `journal`; the
tests see the `Send` commands."""

from __future__ import annotations

import random
from typing import Any

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Command, Event, PeerGone, Received, Send, Sent
from broker.core.journal import Change
from broker.core.scheduler import Scheduler

SENT = Sent()


class Core:
    def __init__(self, config: SchedulerConfig | None = None, seed: int = 1) -> None:
        self.scheduler = Scheduler(config, random.Random(seed))
        self.config = self.scheduler.config
        self.journal: list[Change] = []

    def event(self, event: Event, now: float) -> list[Send]:
        """`event`, then `Sent`: everything it causes, as the server carries it out."""
        sends = self._split(self.scheduler.handle(event, now))
        self.scheduler.check_invariants()
        sends += self._split(self.scheduler.handle(SENT, now))
        self.scheduler.check_invariants()
        return sends

    def handle(self, peer: bytes, message: p.Message, now: float) -> list[Send]:
        return self.event(Received(peer, message), now)

    def receive(self, peer: bytes, message: p.Message, now: float) -> list[Send]:
        """Only what leaves at once: the deferred work waits for `sent`."""
        sends = self._split(self.scheduler.handle(Received(peer, message), now))
        self.scheduler.check_invariants()
        return sends

    def sent(self, now: float) -> list[Send]:
        sends = self._split(self.scheduler.handle(SENT, now))
        self.scheduler.check_invariants()
        return sends

    def tick(self, now: float, unread: bool = False, stall: float = 0.0) -> list[Send]:
        sends = self._split(self.scheduler.tick(now, unread, stall))
        self.scheduler.check_invariants()
        return sends

    def next_deadline(self) -> float:
        return self.scheduler.next_deadline()

    def gone(self, peer: bytes, now: float) -> list[Send]:
        return self.event(PeerGone(peer), now)

    def lost(self, peer: bytes, now: float) -> list[Send]:
        """A send to `peer` failed at `now` and no REGISTER said its process was replaced
        within the heartbeat interval after it (protocol.md 7.4): the node is given up."""
        return self.gone(peer, now) + self.tick(now + self.config.heartbeat_interval)

    def _split(self, commands: list[Command]) -> list[Send]:
        sends = []
        for command in commands:
            if type(command) is Send:
                sends.append(command)
            else:
                self.journal.append(command)  # type: ignore[arg-type]
        return sends

    def take_journal(self) -> list[Change]:
        changes, self.journal = self.journal, []
        return changes

    # ------------------------------------------------------------------ views

    def pending(self, task_id: str) -> bool:
        return self.scheduler.task_view(task_id) is not None

    def attempt(self, task_id: str) -> int:
        view = self.scheduler.task_view(task_id)
        assert view is not None, f"{task_id} is not pending"
        return view.attempt

    def answered(self, task_id: str) -> bool:
        return self.scheduler.kept_answer(task_id) is not None

    def registered(self, identity: bytes) -> bool:
        return self.scheduler.registered(identity)

    def queued(self) -> int:
        return int(self.status()["queued"])

    def counter(self, name: str) -> int:
        return self.scheduler.counters.get(name, 0)

    def node(self, name: str) -> dict[str, Any]:
        [node] = [n for n in self.status()["nodes"] if n["name"] == name]
        return dict(node)

    def status(self, now: float = 0.0) -> dict[str, Any]:
        return self.scheduler.status(now)


def two_slots(config: SchedulerConfig | None = None) -> Core:
    """A core with one node `n` of two slots for `f`."""
    core = Core(config)
    core.handle(b"n", register("n", capacity=2), 0.0)
    return core


def register(name: str, functions: tuple[str, ...] = ("f",), capacity: int = 1) -> p.Register:
    return p.Register(name=name, host="h", pid=1, functions=functions, capacity=capacity)


def warmed_node(core: Core, register: p.Register, client: bytes = b"warm-up") -> None:
    """Register a node and let it answer 50 tasks at once: its run time per task falls near
    0, so it may hold its whole prefetch window."""
    identity = register.name.encode()
    core.handle(identity, register, 0.0)
    function = register.functions[0]
    for i in range(50):
        [(_, task_id)] = runs(core.handle(client, execute(f"warm-{i}", function), 0.0))
        core.handle(identity, ok(task_id), 0.0)


def execute(
    task_id: str,
    function: str = "f",
    priority: int = 5,
    *,
    args: bytes = b"[1,2]",
    retries: int | None = None,
    queue_timeout: float | None = None,
    task_timeout: float | None = None,
    retry_on: tuple[str, ...] | None = None,
) -> p.Execute:
    spec = p.TaskSpec(
        task_id, function, args, priority, retries, queue_timeout, task_timeout, retry_on
    )
    return p.Execute(spec)


def ok(task_id: str, result: bytes = b"3", attempt: int | None = None) -> p.Result:
    return p.Result(task_id, 0, result, None, attempt)


def runs(sends: list[Send]) -> list[tuple[bytes, str]]:
    return [(s.peer, s.message.task_id) for s in sends if isinstance(s.message, p.Run)]


def completed(sends: list[Send]) -> list[p.TaskCompleted]:
    return [s.message for s in sends if isinstance(s.message, p.TaskCompleted)]


def rng() -> random.Random:
    return random.Random(1)
