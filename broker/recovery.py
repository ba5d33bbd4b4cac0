"""Recovery: what failures cost a task, sans-IO.

A failed attempt is retried after a backoff or answered; a queued task past its queue
timeout is answered Expired; a node that does not answer a task past its timeout is
dropped; a node that is lost hands its tasks back; after a restart, tasks for functions no
node offers again are refused once the grace is over. Builds on `TaskFlow` (start, queue,
answer); `broker.scheduler.Scheduler` adds the message handlers on top. No sockets, no clock.
"""

from __future__ import annotations

import logging

from broker import journal as j, protocol as p
from broker.queues import TaskRecord
from broker.retries import RETRYABLE
from broker.taskflow import Failure, Send, TaskFlow
from broker.workers import NodeRecord

log = logging.getLogger(__name__)


class Recovery(TaskFlow):
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
