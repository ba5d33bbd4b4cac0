"""TaskFlow: the scheduler's state and how tasks move through it, sans-IO.

Start, queue, retry, expire, answer, bury in the dead-letter queue, and what a lost node
costs its tasks. `broker.scheduler.Scheduler` adds the message handlers on top. No sockets,
no clock: `now` comes in. Payloads pass through as bytes that are never decoded here.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from typing import TypeAlias

from broker import journal as j, protocol as p
from broker.deadletters import DeadLetter, DeadLetters
from broker.deadlines import Deadlines
from broker.messages import frozen
from broker.queues import TaskQueue, TaskRecord
from broker.results import ResultCache, ResultCacheConfig
from broker.retries import RETRYABLE, RetryPolicy, RetryTimers
from broker.workers import LEAST_LOADED, NodeRecord, WorkerPool

log = logging.getLogger(__name__)

Failure: TypeAlias = tuple[int, p.ErrorInfo]  # exit code and error of a failed attempt


@frozen
class Send:
    """Command: send `message` to the peer with ROUTER identity `identity`."""

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

    def _release_held(self, now: float) -> list[Send]:
        """The restart grace is over: tasks still waiting for a function no node offers
        are refused as they would have been at once (exit 127, not dead letters)."""
        self.held_until = None
        sends: list[Send] = []
        for record in self.held:
            waiting = self.tasks.get(record.task_id) is record and record.attempt == 0
            if waiting and not self.offered(record.function, now):
                self.counters["unknown_function"] += 1
                text = f"no node offering {record.function!r} registered after the restart"
                error = p.ErrorInfo("UnknownFunction", text)
                result = p.Result(record.task_id, p.EXIT_UNKNOWN_FUNCTION, b"null", error)
                sends += self._complete(result, now, bury=False)
        self.held.clear()
        return sends

    def _note_offers(self, node: NodeRecord, now: float) -> None:
        """`node` takes no more work: remember which functions it was the last to offer."""
        grace = now + self.config.offer_grace_seconds
        for function in node.functions:
            if not self.pool.offers(function):
                self.offered_until[function] = grace

    def next_seq(self) -> int:
        """The next submission number (tasks keep theirs when requeued)."""
        return next(self._seq)

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

    def _conclude(self, sender: bytes, msg: p.Result, now: float) -> list[Send]:
        """A RESULT arrived: answer the task, try it again later, or ignore a stale failure."""
        record = self.tasks.get(msg.task_id)
        if record is None or msg.exit_code == 0:
            return self._complete(msg, now)
        if record.node != sender:
            self.counters["stale_failures"] += 1  # an attempt already replaced: no verdict
            return []
        if msg.exit_code in RETRYABLE and record.attempt <= record.retries:
            return self._retry_later(record, now)
        return self._complete(msg, now)

    def _retry_later(self, record: TaskRecord, now: float) -> list[Send]:
        self.counters["retried"] += 1
        record.node = None
        record.overdue_at = None
        if self._journaling:
            self.journal.append(j.Attempted(record.task_id, record.attempt))
        due = now + self.config.retry.delay(record.attempt, self._rng)
        if due <= now:
            return self._requeue(record, now)
        self.retry_timers.add(record, due)
        return []

    def _requeue(self, record: TaskRecord, now: float) -> list[Send]:
        """Run `record` again now if a slot is free, else queue it (it keeps its place)."""
        target = self.pool.pick(record.function) if self.accepting else None
        if target is None:
            self.queue.push(record)
            return []
        return [self._start(record, target, now)]

    def _expire(self, record: TaskRecord, now: float) -> list[Send]:
        """A queued task was not started by its deadline: answer it Expired."""
        self.counters["expired"] += 1
        waited = now - record.submitted_at
        text = (
            f"not started within its queue timeout ({waited:.3g} s waited): no free "
            f"node offering {record.function!r}"
        )
        error = p.ErrorInfo("Expired", text)
        return self._complete(p.Result(record.task_id, p.EXIT_EXPIRED, b"null", error), now)

    def _overdue(self, record: TaskRecord, now: float) -> list[Send]:
        """A node did not answer a task by its timeout plus the grace: it does not stop its
        functions, so the broker stops using it (protocol.md 5.3)."""
        node = self.pool.nodes.get(record.node or b"")
        if node is None or self.tasks.get(record.task_id) is not record:
            return []
        log.warning(
            "node %s (%s) did not answer task %s within its %g s timeout: disconnected",
            node.name,
            node.node_id,
            record.task_id,
            record.timeout,
        )
        text = (
            f"exceeded its timeout of {record.timeout:g} s on node {node.name}, which did "
            f"not stop it (attempt {record.attempt})"
        )
        failure = (p.EXIT_TIMEOUT, p.ErrorInfo("Timeout", text))
        sends = [Send(node.identity, p.Disconnect("did not stop a task past its timeout"))]
        return sends + self._lose_node(node.identity, "overdue", now, failure, record.task_id)

    def _give_up(
        self, record: TaskRecord, node: NodeRecord, now: float, failure: Failure | None
    ) -> list[Send]:
        """The task failed on its last allowed attempt: answer it (NodeLost by default)."""
        if failure is None:
            tries = record.attempt
            text = f"node {node.name} stopped answering while running it, on attempt {tries}"
            error = p.ErrorInfo("NodeLost", text + f" of {record.retries + 1}")
            failure = (p.EXIT_NODE_LOST, error)
        result = p.Result(record.task_id, failure[0], b"null", failure[1])
        return self._complete(result, now)

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
        return [Send(identity, reply) for identity in record.reply_to]

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

    def _lose_node(
        self,
        identity: bytes,
        why: str,
        now: float,
        failure: Failure | None = None,
        only: str | None = None,
    ) -> list[Send]:
        """Forget a node; each task it was running has lost an attempt and is retried or
        answered. The answer says NodeLost unless `failure` gives the cause (for every task,
        or with `only` for that task alone)."""
        node = self.pool.remove(identity)
        if node is None:
            return []
        self._note_offers(node, now)
        self.counters[f"nodes_{why}"] += 1
        orphans = sorted(
            (self.tasks[t] for t in node.active if t in self.tasks),
            key=lambda r: (-r.priority, r.seq),
        )
        sends = []
        for record in orphans:
            if record.node != identity:
                continue  # already restarted elsewhere
            reason = failure if only is None or only == record.task_id else None
            if record.attempt > record.retries:
                sends += self._give_up(record, node, now, reason)
            else:
                self.counters["requeued"] += 1
                sends += self._retry_later(record, now)
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
