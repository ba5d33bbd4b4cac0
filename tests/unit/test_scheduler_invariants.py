"""Seeded random sequences of events against the scheduler, invariants checked after every
step, and an accounting check at the end: every accepted task is answered exactly once."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from broker import protocol as p
from broker.core import journal as j
from broker.core.config import STRATEGIES, SchedulerConfig
from broker.core.events import Send
from tests.unit.core import Core

FUNCTIONS = ("f", "g", "h")
FORGED = b'"forged"'  # what a peer that does not hold a task claims as its result


class Simulation:
    """Drives a Scheduler like a cluster would, remembering what each node was told to run."""

    def __init__(self, seed: int, strategy: str) -> None:
        self.rng = random.Random(seed)
        config = SchedulerConfig(strategy, heartbeat_interval=1.0, liveness=3, journal=True)
        self.core = Core(config, seed)  # retry jitter, reproducible; invariants every step
        self.sched = self.core.scheduler
        self.now = 0.0
        # What each live node was sent and has not answered, in order: it runs the first
        # `capacity` and holds the rest (protocol.md 5.5).
        self.running: dict[bytes, list[str]] = {}
        self.retracts: dict[bytes, list[tuple[str, ...]]] = {}  # RETRACTs not answered yet
        self.registers: dict[bytes, p.Register] = {}  # what each node registered with
        # (requester, task id, lifetime): a replayed task lives again, and a requester of
        # its new lifetime is owed a new answer
        self.answers: Counter[tuple[bytes, str, int]] = Counter()
        self.lifetime: Counter[str] = Counter()
        self.accepted: set[str] = set()
        self.next_task = 0
        self.next_node = 0
        self.late = 0
        self.pending: dict[str, int] = {}  # the store's view, folded from the journal
        self.dead: set[str] = set()

    def apply(self, sender: bytes, message: p.Message) -> None:
        self.absorb(self.core.handle(sender, message, self.now))

    def fold_journal(self) -> None:
        """What a store would hold: must always match the scheduler's own state."""
        for change in self.core.take_journal():
            if isinstance(change, j.SaveTask):
                self.pending[change.spec.task_id] = 0
            elif isinstance(change, j.SaveAttempts):
                self.pending[change.task_id] = change.attempts
            elif isinstance(change, j.SaveAnswer):
                self.pending.pop(change.answer.task_id)
            elif isinstance(change, j.SaveDeadLetter):
                self.dead.add(change.entry.spec.task_id)
            elif isinstance(change, j.ForgetDeadLetter):
                self.dead.difference_update(
                    self.dead if change.task_id is None else {change.task_id}
                )
        assert self.pending.keys() == set(self.sched.pending()), "journal and tasks disagree"
        assert self.dead == set(self.sched.dead_letter_ids())

    def absorb(self, sends: list[Send]) -> None:
        for send in sends:
            msg = send.message
            if isinstance(msg, p.Run) and send.peer in self.running:
                self.running[send.peer].append(msg.task_id)  # a dead node never sees it
            elif isinstance(msg, p.Retract) and send.peer in self.running:
                self.retracts.setdefault(send.peer, []).append(msg.task_ids)
            elif isinstance(msg, p.TaskCompleted):
                assert msg.result != FORGED, f"a forged RESULT answered {msg.task_id}"
                # 127 too: refused at once, or at the end of the grace it was accepted in.
                self.answers[send.peer, msg.task_id, self.lifetime[msg.task_id]] += 1
            elif isinstance(msg, p.DlqReply):
                self.lifetime.update(msg.body["replayed"])

    def step(self) -> None:
        self.now += self.rng.choice((0.0, 0.1, 0.5, 1.5))
        action = self.rng.choice(
            ["register", "submit", "submit", "submit", "result", "result", "heartbeat",
             "deregister", "tick", "tick", "resend", "resend_finished", "die", "restart",
             "replay", "forge", "answer_retract"]
        )  # fmt: skip
        getattr(self, f"do_{action}")()
        self.fold_journal()

    def live_nodes(self) -> list[bytes]:
        return [n for n in self.running if self.sched.registered(n)]

    def do_register(self) -> None:
        identity = f"n{self.next_node}".encode()
        self.next_node += 1
        functions = tuple(self.rng.sample(FUNCTIONS, self.rng.randint(1, 3)))
        capacity = self.rng.randint(1, 3)
        prefetch = self.rng.choice((0, 0, 1, 3))
        self.running[identity] = []
        register = p.Register(identity.decode(), "h", 1, functions, capacity, None, prefetch)
        self.registers[identity] = register
        self.apply(identity, register)

    def do_restart(self) -> None:
        """A supervisor restarts a node process: a new identity and pid replace the old."""
        if not self.live_nodes():
            return
        old_identity = self.rng.choice(self.live_nodes())
        old = self.registers[old_identity]
        self.running.pop(old_identity)
        identity = f"n{self.next_node}".encode()
        self.next_node += 1
        self.running[identity] = []
        gone = p.Replaces(old.pid, "killed by signal 9 (SIGKILL)")
        register = p.Register(
            old.name, old.host, old.pid + 1000, old.functions, old.capacity, gone, old.prefetch
        )
        self.registers[identity] = register
        self.apply(identity, register)

    def do_replay(self) -> None:
        self.apply(b"operator", p.Dlq("replay"))

    def do_submit(self) -> None:
        task_id = f"t{self.next_task}"
        self.next_task += 1
        function = self.rng.choice(FUNCTIONS)
        offered = self.sched.offered(function, self.now)
        deadline = self.rng.choice((None, None, 0.5, 3.0))
        timeout = self.rng.choice((None, None, 1.0))
        priority = self.rng.randint(0, 9)
        spec = p.TaskSpec(task_id, function, b"[]", priority, None, deadline, timeout)
        execute = p.Execute(spec)
        self.apply(b"client", execute)
        if offered:
            self.accepted.add(task_id)

    def do_resend(self) -> None:
        pending = self.sched.pending()
        if pending:
            view = self.sched.task_view(self.rng.choice(sorted(pending)))
            assert view is not None
            self.apply(b"client-2", p.Execute(view.spec))

    def do_resend_finished(self) -> None:
        finished = sorted(self.accepted - set(self.sched.pending()))
        if finished:
            task_id = self.rng.choice(finished)
            self.late += 1  # a fresh requester each time: each must get exactly one answer
            self.apply(f"late-{self.late}".encode(), p.Execute(p.TaskSpec(task_id, "f", b"[]")))
            if self.sched.task_view(task_id) is not None:  # its answer expired: it runs anew
                self.lifetime[task_id] += 1

    def started(self, node: bytes) -> list[str]:
        return self.running[node][: self.registers[node].capacity]

    def do_result(self) -> None:
        busy = [n for n, tasks in self.running.items() if tasks]
        if busy:
            node = self.rng.choice(busy)
            task_id = self.rng.choice(sorted(self.started(node)))
            self.running[node].remove(task_id)
            self.apply(node, p.Result(task_id, self.rng.choice((0, 1)), b"null"))

    def do_answer_retract(self) -> None:
        asked = [n for n, retracts in self.retracts.items() if retracts and n in self.running]
        if asked:
            self.answer_retract(self.rng.choice(asked))

    def answer_retract(self, node: bytes) -> None:
        """What the node has not started is given back; the rest it runs (or ran)."""
        task_ids = self.retracts[node].pop(0)
        started = set(self.started(node))
        returned = [t for t in task_ids if t in self.running[node] and t not in started]
        for task_id in returned:
            self.running[node].remove(task_id)
        others = tuple(t for t in task_ids if t not in returned)
        self.apply(node, p.Retracted(tuple(returned), others))

    def do_forge(self) -> None:
        """A RESULT for a pending task from a peer that does not run it: a registered node
        or a stranger. It must change nothing."""
        pending = sorted(self.sched.pending())
        if pending:
            task_id = self.rng.choice(pending)
            others = [n for n, tasks in self.running.items() if task_id not in tasks]
            peer = self.rng.choice([*others, b"stranger"])
            self.apply(peer, p.Result(task_id, 0, FORGED))

    def do_heartbeat(self) -> None:
        for node in self.live_nodes():
            if self.rng.random() < 0.8:
                self.apply(node, p.Heartbeat())

    def do_deregister(self) -> None:
        if self.live_nodes():
            self.apply(self.rng.choice(self.live_nodes()), p.Deregister())

    def do_tick(self) -> None:
        self.absorb(self.core.tick(self.now))

    def do_die(self) -> None:
        if self.live_nodes():
            self.running.pop(self.rng.choice(self.live_nodes()))  # silent from now on

    def finish(self) -> None:
        """Bring up a node for everything, let time pass, and answer every RUN."""
        self.running[b"closer"] = []
        self.registers[b"closer"] = p.Register("closer", "h", 1, FUNCTIONS, 3)
        self.apply(b"closer", self.registers[b"closer"])
        for _ in range(10_000):
            if not self.sched.pending():
                return
            self.now += 0.5
            for node in self.live_nodes():
                while self.retracts.get(node):
                    self.answer_retract(node)
                while self.running[node]:
                    task_id = self.running[node].pop(0)
                    self.apply(node, p.Result(task_id, 0, b"null"))
                self.apply(node, p.Heartbeat())
            self.absorb(self.core.tick(self.now))
            self.fold_journal()
        raise AssertionError(f"tasks never finished: {sorted(self.sched.pending())}")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", range(25))
def test_random_sequences_keep_invariants_and_answer_every_task_once(
    seed: int, strategy: str
) -> None:
    sim = Simulation(seed, strategy)
    for _ in range(300):
        sim.step()
    sim.finish()
    answered = {task_id for _, task_id, _ in sim.answers}
    assert sim.accepted <= answered, f"unanswered: {sorted(sim.accepted - answered)}"
    twice = {key: n for key, n in sim.answers.items() if n > 1}
    assert not twice, f"requesters answered more than once: {twice}"
