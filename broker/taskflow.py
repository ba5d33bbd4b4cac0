"""TaskFlow: the scheduler's state and how tasks move through it, sans-IO.

Admit, start, queue, answer, keep the answer, bury failures in the dead-letter queue, and
restore what a durable store kept. `broker.recovery.Recovery` adds what failures cost and
`broker.scheduler.Scheduler` the message handlers on top. No sockets, no clock: `now` comes
in. Payloads pass through as bytes that are never decoded here.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import count
from typing import TypeAlias

from msgspec import Struct

from broker import journal as j, protocol as p
from broker.deadletters import DeadLetter, DeadLetters
from broker.deadlines import Deadlines
from broker.queues import TaskQueue, TaskRecord
from broker.results import ResultCache, ResultCacheConfig
from broker.retries import RetryPolicy, RetryTimers
from broker.workers import LEAST_LOADED, NodeRecord, WorkerPool

log = logging.getLogger(__name__)

Failure: TypeAlias = tuple[int, p.ErrorInfo]  # exit code and error of a failed attempt


class Send(Struct, frozen=True, gc=False):
    """Command: send `message` to the peer with ROUTER identity `identity` (a frozen msgspec
    Struct: built twice per round trip, and its constructor runs in C)."""

    identity: bytes
    message: p.Message


@dataclass(frozen=True)
class SchedulerConfig:
    strategy: str = LEAST_LOADED
    heartbeat_interval: float = p.DEFAULT_HEARTBEAT_INTERVAL
    liveness: int = p.DEFAULT_LIVENESS
    results: ResultCacheConfig = field(default_factory=ResultCacheConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    task_timeout: float | None = None  # seconds per attempt for tasks that do not say
    # How long after its last node left (or after a restart from a store) a function still
    # counts as offered: its tasks wait for the node to come back instead of getting 127.
    offer_grace: float | None = None  # None: 2 x heartbeat expiry + 5 s
    journal: bool = False  # record changes in `journal` for a durable store
    dead_letters_max: int = 100_000

    @property
    def expiry(self) -> float:
        return self.heartbeat_interval * self.liveness

    @property
    def offer_grace_seconds(self) -> float:
        return 2 * self.expiry + 5.0 if self.offer_grace is None else self.offer_grace

    @property
    def timeout_grace(self) -> float:
        """How long past a task's timeout the broker waits for the node's own RESULT 124
        before it gives up on the node (protocol.md 5.3)."""
        return max(1.0, self.expiry)


class TaskFlow:
    def __init__(
        self, config: SchedulerConfig | None = None, rng: random.Random | None = None
    ) -> None:
        self.config = config or SchedulerConfig()
        self._rng = rng or random.Random()  # retry jitter; seeded in tests
        self.pool = WorkerPool(self.config.strategy)
        self.queue = TaskQueue()
        self.tasks: dict[str, TaskRecord] = {}  # every accepted task not yet answered
        self.results = ResultCache(self.config.results)  # recently answered tasks
        self.dead = DeadLetters(self.config.dead_letters_max)
        self.retry_timers = RetryTimers()  # failed tasks waiting for their next attempt
        self.deadlines = Deadlines("expires_at")  # queued tasks that must start by a time
        self.overdue = Deadlines("overdue_at")  # running tasks whose node must answer by then
        self.journal: list[j.Change] = []  # changes since the server last took them
        self._journaling = self.config.journal
        self.accepting = True  # False once the broker is stopping: no new tasks start
        self.offered_until: dict[str, float] = {}  # functions whose last node left lately
        # After a restart from a store, tasks for functions no node offers yet wait until
        # `held_until` for their nodes to register again, instead of getting 127 at once.
        self.held_until: float | None = None
        self.held: list[TaskRecord] = []
        self.counters: Counter[str] = Counter()
        self._seq = count()
        # Left for `settle` by the last event: answers to keep, and (node, task id) slots
        # that a RESULT freed.
        self._answered: list[tuple[TaskRecord, p.TaskCompleted, bool]] = []
        self._freed: list[tuple[NodeRecord, str]] = []

    def offered(self, function: str, now: float) -> bool:
        """Whether a node offers `function`, or did until moments ago (a node process being
        replaced, a broker restarted from its store): then its tasks wait for one."""
        if self.pool.offers(function):
            return True
        until = self.offered_until.get(function)
        if until is None:
            return False
        if until < now:
            del self.offered_until[function]
            return False
        return True

    def _note_offers(self, node: NodeRecord, now: float) -> None:
        """`node` takes no more work: remember which functions it was the last to offer."""
        grace = now + self.config.offer_grace_seconds
        for function in node.functions:
            if not self.pool.offers(function):
                self.offered_until[function] = grace

    def next_seq(self) -> int:
        """The next submission number (tasks keep theirs when requeued)."""
        return next(self._seq)

    def restore(
        self,
        tasks: Iterable[j.StoredTask],
        results: Iterable[tuple[p.TaskCompleted, float]],
        dead: Iterable[DeadLetter],
        next_seq: int,
        now: float,
    ) -> None:
        """Take back what a durable store kept: pending tasks queue again (nobody waits for
        them until a client resends their id), kept answers and dead letters return."""
        self._seq = count(next_seq)
        for answer, at in results:
            self.results.add(answer, at)
        for entry in dead:
            self.dead.add(entry)
        for stored in tasks:
            record = TaskRecord(
                stored.task_id,
                stored.function,
                stored.payload,
                stored.priority,
                stored.seq,
                [],
                stored.submitted_at,
                attempt=stored.attempts,
                retries=stored.retries,
                expires_at=stored.expires_at,
                timeout=stored.timeout,
            )
            self.admit(record, now, journal=False)
        if self.tasks:
            self.counters["restored"] += len(self.tasks)
        if self.tasks or len(self.results) or len(self.dead):
            # A restarted broker: its nodes have not registered again yet.
            self.held_until = now + self.config.offer_grace_seconds

    def take_journal(self) -> list[j.Change]:
        """The changes since the last call, for the store; the journal starts again empty."""
        changes, self.journal = self.journal, []
        return changes

    def admit(self, record: TaskRecord, now: float, journal: bool = True) -> list[Send]:
        """Take a new (or replayed, or restored) task: start it or queue it."""
        self.tasks[record.task_id] = record
        if journal and self._journaling:
            self.journal.append(j.Accepted(_stored(record)))
        node = None if self.queue.has(record.function) else self.pool.pick(record.function)
        if node is None or not self.accepting:
            self.queue.push(record)
            if record.expires_at is not None:
                self.deadlines.add(record)
            return []
        record.expires_at = None
        return [self._start(record, node, now)]

    def _complete(self, msg: p.Result, now: float, bury: bool = True) -> list[Send]:
        """Answer a task: its TASK_COMPLETED to every requester. Keeping the answer for
        resends, the journal, the counters and the dead-letter queue wait for `settle`, so
        that the answer leaves first."""
        record = self.tasks.pop(msg.task_id, None)
        if record is None:
            self.counters["results_unmatched"] += 1  # late duplicate or unknown task
            return []
        if record.node is None:
            self.queue.remove(record)  # a late result for a task already requeued
            record.retry_due = None  # and if it was waiting to retry, it waits no more
        record.overdue_at = record.expires_at = None
        reply = p.TaskCompleted(msg.task_id, msg.exit_code, msg.payload, msg.error, record.attempt)
        self._answered.append((record, reply, bury))
        reply_to = record.reply_to
        if len(reply_to) == 1:  # the common case, without a comprehension's call
            return [Send(reply_to[0], reply)]
        return [Send(identity, reply) for identity in reply_to]

    def settle(self, now: float) -> list[Send]:
        """Finish the bookkeeping the last event left for after its sends: keep the answers
        (for resends), journal them, count them, bury the failures, and give the slots that
        RESULTs freed their next tasks. The state is whole again only after this."""
        if self._answered:
            answered, self._answered = self._answered, []
            for record, reply, bury in answered:
                self.counters["completed" if reply.exit_code == 0 else "failed"] += 1
                self.results.add(reply, now)
                if self._journaling:
                    self.journal.append(j.Finished(reply, now))
                if reply.exit_code != 0 and bury:
                    self._bury(record, reply, now)
        if not self._freed:
            return []
        freed, self._freed = self._freed, []
        sends: list[Send] = []
        for node, task_id in freed:
            if self.pool.nodes.get(node.identity) is node:  # not lost since (its sends failed)
                sends += self._refill(node, self.pool.release(node, task_id), now)
        return sends

    def _refill(self, node: NodeRecord, released: bool, now: float) -> list[Send]:
        """A RESULT came from `node`: a draining node that runs nothing more is gone; else
        if it freed a slot, the slot takes the next queued task."""
        if node.draining and not node.active:
            self.pool.remove(node.identity)
            return []
        return self._feed(node, now) if released else []

    def _bury(self, record: TaskRecord, reply: p.TaskCompleted, now: float) -> None:
        """A task that failed for good goes to the dead-letter queue."""
        self.counters["dead_lettered"] += 1
        entry = DeadLetter(
            record.task_id,
            record.function,
            record.payload,
            record.priority,
            record.retries,
            record.timeout,
            reply.attempts,
            reply.exit_code,
            reply.error,
            now,
        )
        self.dead.add(entry)
        if self._journaling:
            self.journal.append(j.DeadLettered(entry))

    def _start(self, record: TaskRecord, node: NodeRecord, now: float) -> Send:
        record.attempt += 1
        record.expires_at = None  # started: its queue deadline no longer applies
        record.node = node.identity
        self.pool.assign(node, record.task_id)
        node.last_sent = now
        timeout = record.timeout
        if timeout is not None:
            record.overdue_at = now + timeout + self.config.timeout_grace
            self.overdue.add(record)
        run = p.Run(record.task_id, record.function, record.payload, record.attempt, timeout)
        return Send(node.identity, run)

    def _feed(self, node: NodeRecord, now: float) -> list[Send]:
        """Fill `node`'s free slots from the queue (an idle node takes the next task)."""
        sends = []
        while self.queue and node.free > 0 and not node.draining and self.accepting:
            record = self.queue.pop_for(node.functions)
            if record is None:
                break
            sends.append(self._start(record, node, now))
        return sends


def _stored(record: TaskRecord) -> j.StoredTask:
    return j.StoredTask(
        record.task_id,
        record.function,
        record.payload,
        record.priority,
        record.seq,
        record.retries,
        record.timeout,
        record.attempt,
        record.submitted_at,
        record.expires_at,
    )
