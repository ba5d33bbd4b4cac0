"""The broker's scheduling core, sans-IO.

State changes only through `handle(sender, message, now)`, `refuse(...)`, `unreachable(...)`
and `tick(now)`; each returns the messages to send as `Send` commands. No sockets, no clock:
the server owns both. Payloads pass through as bytes that are never decoded here.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from broker import protocol as p
from broker.deadlines import QueueDeadlines
from broker.queues import TaskQueue, TaskRecord
from broker.results import ResultCache, ResultCacheConfig
from broker.retries import RETRYABLE, RetryPolicy, RetryTimers
from broker.views import status_body
from broker.workers import LEAST_LOADED, NodeRecord, WorkerPool

log = logging.getLogger(__name__)

MAX_REPLY_TO = 8  # requesters remembered per pending task (Lazy Pirate resends add one each)


@dataclass(frozen=True, slots=True)
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

    @property
    def expiry(self) -> float:
        return self.heartbeat_interval * self.liveness


class Scheduler:
    def __init__(
        self, config: SchedulerConfig | None = None, rng: random.Random | None = None
    ) -> None:
        self.config = config or SchedulerConfig()
        self._rng = rng or random.Random()  # retry jitter; seeded in tests
        self.retry_timers = RetryTimers()  # failed tasks waiting for their next attempt
        self.deadlines = QueueDeadlines()  # queued tasks that must start by a time
        self.pool = WorkerPool(self.config.strategy)
        self.queue = TaskQueue()
        self.tasks: dict[str, TaskRecord] = {}  # every accepted task not yet answered
        self.results = ResultCache(self.config.results)  # recently answered tasks
        self.counters: Counter[str] = Counter()
        self._seq = count()
        self._next_tick = 0.0
        self._handlers: dict[type, Callable[[bytes, Any, float], list[Send]]] = {
            p.Execute: self._on_execute,
            p.Result: self._on_result,
            p.Heartbeat: self._on_heartbeat,
            p.Register: self._on_register,
            p.Deregister: self._on_deregister,
            p.Status: self._on_status,
            p.Error: self._on_error,
        }

    # ------------------------------------------------------------------ events

    def handle(self, sender: bytes, message: p.Message, now: float) -> list[Send]:
        """A decoded message arrived from `sender`."""
        node = self.pool.nodes.get(sender)
        if node is not None:
            node.last_seen = now  # any traffic is a sign of life
        handler = self._handlers.get(type(message))
        if handler is None:
            return self.refuse(sender, p.ProtocolError(p.ERR_UNKNOWN_COMMAND, _wrong_way(message)))
        return handler(sender, message, now)

    def refuse(self, sender: bytes, error: p.ProtocolError) -> list[Send]:
        """A message from `sender` could not be decoded or is not one the broker takes."""
        self.counters[f"refused_{error.code}"] += 1
        return [Send(sender, p.Error(error.code, error.message, error.task_id))]

    def unreachable(self, identity: bytes, now: float) -> list[Send]:
        """A send to `identity` failed because that peer is gone."""
        self.counters["unreachable"] += 1
        if identity in self.pool:
            return self._lose_node(identity, "unreachable", now)
        return []

    def tick(self, now: float) -> list[Send]:
        """Expire silent nodes and heartbeat quiet ones. Call at `next_deadline()`."""
        sends: list[Send] = []
        expiry, interval = self.config.expiry, self.config.heartbeat_interval
        for node in list(self.pool.nodes.values()):
            if now - node.last_seen > expiry:
                log.warning(
                    "node %s (%s) silent for %.2fs: declared dead",
                    node.name,
                    node.node_id,
                    now - node.last_seen,
                )
                sends += self._lose_node(node.identity, "expired", now)
            elif now - node.last_sent >= interval:
                node.last_sent = now
                sends.append(Send(node.identity, p.Heartbeat()))
        for record in self.retry_timers.pop_due(now):
            sends += self._requeue(record, now)
        for record in self.deadlines.pop_due(now):
            sends += self._expire(record, now)
        self.results.expire(now)
        self._next_tick = now + interval / 4
        return sends

    def next_deadline(self) -> float:
        """When `tick` must next run (monotonic seconds, the clock `now` comes from)."""
        due = [self._next_tick, self.retry_timers.next_due(), self.deadlines.next_due()]
        return min(t for t in due if t is not None)

    def shutdown(self) -> list[Send]:
        """Tell every node the broker is going away."""
        bye = p.Disconnect("broker shutting down")
        return [Send(identity, bye) for identity in self.pool.nodes]

    # ------------------------------------------------------------------ clients

    def _on_execute(self, sender: bytes, msg: p.Execute, now: float) -> list[Send]:
        record = self.tasks.get(msg.task_id)
        if record is not None:
            # A resend (Lazy Pirate) or a second submitter: answer it, do not run it again.
            self.counters["resubmitted"] += 1
            if sender not in record.reply_to:
                record.reply_to.append(sender)
                del record.reply_to[:-MAX_REPLY_TO]
            return []
        answered = self.results.get(msg.task_id)
        if answered is not None:
            # It finished already; its requester lost the answer (or asks twice).
            self.counters["answered_again"] += 1
            return [Send(sender, answered)]
        if not self.pool.offers(msg.function):
            self.counters["unknown_function"] += 1
            error = p.ErrorInfo("UnknownFunction", _unknown_function(msg.function))
            reply = p.TaskCompleted(msg.task_id, p.EXIT_UNKNOWN_FUNCTION, b"null", error, 0)
            return [Send(sender, reply)]
        self.counters["accepted"] += 1
        record = TaskRecord(
            msg.task_id, msg.function, msg.payload, msg.priority, next(self._seq), [sender], now
        )
        record.retries = self.config.retry.retries if msg.retries is None else msg.retries
        self.tasks[msg.task_id] = record
        node = None if self.queue.has(msg.function) else self.pool.pick(msg.function)
        if node is None:
            self.queue.push(record)
            if msg.queue_timeout is not None:
                record.expires_at = now + msg.queue_timeout
                self.deadlines.add(record)
            return []
        return [self._start(record, node, now)]

    def _on_status(self, sender: bytes, msg: p.Status, now: float) -> list[Send]:
        return [Send(sender, p.StatusReply(self.status(now)))]

    def _on_error(self, sender: bytes, msg: p.Error, now: float) -> list[Send]:
        log.warning("peer %s sent ERROR %s: %s", sender.hex(), msg.code, msg.message)
        self.counters["errors_received"] += 1
        return []  # never answer an error with an error

    # ------------------------------------------------------------------ nodes

    def _on_register(self, sender: bytes, msg: p.Register, now: float) -> list[Send]:
        sends = self._lose_node(sender, "re-registered", now) if sender in self.pool else []
        node = self.pool.add(sender, msg, now)
        self.counters["nodes_registered"] += 1
        log.info(
            "node %s (%s) registered: capacity %d, %d functions",
            node.name,
            node.node_id,
            node.capacity,
            len(node.functions),
        )
        config = self.config
        sends.append(
            Send(sender, p.Registered(node.node_id, config.heartbeat_interval, config.liveness))
        )
        sends += self._feed(node, now)
        return sends

    def _on_deregister(self, sender: bytes, msg: p.Deregister, now: float) -> list[Send]:
        node = self.pool.drain(sender)
        if node is None:
            return []
        self.counters["nodes_deregistered"] += 1
        log.info(
            "node %s (%s) deregistered with %d tasks running",
            node.name,
            node.node_id,
            len(node.active),
        )
        if not node.active:
            self.pool.remove(sender)
        return []

    def _on_heartbeat(self, sender: bytes, msg: p.Heartbeat, now: float) -> list[Send]:
        if sender in self.pool:
            return []
        self.counters["heartbeats_unknown"] += 1
        return [Send(sender, p.Disconnect("not registered: send REGISTER"))]

    def _on_result(self, sender: bytes, msg: p.Result, now: float) -> list[Send]:
        node = self.pool.nodes.get(sender)
        freed = node is not None and self.pool.release(node, msg.task_id)
        sends = self._settle(sender, msg, now)
        if node is None:
            sends.append(Send(sender, p.Disconnect("not registered: send REGISTER")))
        elif node.draining and not node.active:
            self.pool.remove(sender)
        elif freed:
            sends += self._feed(node, now)
        return sends

    # ------------------------------------------------------------------ moving tasks

    def _settle(self, sender: bytes, msg: p.Result, now: float) -> list[Send]:
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
        due = now + self.config.retry.delay(record.attempt, self._rng)
        if due <= now:
            return self._requeue(record, now)
        self.retry_timers.add(record, due)
        return []

    def _requeue(self, record: TaskRecord, now: float) -> list[Send]:
        """Run `record` again now if a slot is free, else queue it (it keeps its place)."""
        target = self.pool.pick(record.function)
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

    def _give_up(self, record: TaskRecord, node: NodeRecord, now: float) -> list[Send]:
        """The task's node died on its last allowed attempt: answer it with NodeLost."""
        tries = record.attempt
        text = f"node {node.name} stopped answering while running it, on attempt {tries}"
        error = p.ErrorInfo("NodeLost", text + f" of {record.retries + 1}")
        return self._complete(p.Result(record.task_id, p.EXIT_NODE_LOST, b"null", error), now)

    def _complete(self, msg: p.Result, now: float) -> list[Send]:
        record = self.tasks.pop(msg.task_id, None)
        if record is None:
            self.counters["results_unmatched"] += 1  # late duplicate or unknown task
            return []
        if record.node is None:
            self.queue.remove(record)  # a late result for a task already requeued
            record.retry_due = None  # and if it was waiting to retry, it waits no more
        self.counters["completed" if msg.exit_code == 0 else "failed"] += 1
        reply = p.TaskCompleted(msg.task_id, msg.exit_code, msg.payload, msg.error, record.attempt)
        self.results.add(reply, now)
        return [Send(identity, reply) for identity in record.reply_to]

    def _start(self, record: TaskRecord, node: NodeRecord, now: float) -> Send:
        record.attempt += 1
        record.expires_at = None  # started: its queue deadline no longer applies
        record.node = node.identity
        self.pool.assign(node, record.task_id)
        node.last_sent = now
        return Send(
            node.identity, p.Run(record.task_id, record.function, record.payload, record.attempt)
        )

    def _feed(self, node: NodeRecord, now: float) -> list[Send]:
        """Fill `node`'s free slots from the queue (an idle node takes the next task)."""
        sends = []
        while node.free > 0 and not node.draining:
            record = self.queue.pop_for(node.functions)
            if record is None:
                break
            sends.append(self._start(record, node, now))
        return sends

    def _lose_node(self, identity: bytes, why: str, now: float) -> list[Send]:
        """Forget a node and put the tasks it was running back where they were."""
        node = self.pool.remove(identity)
        if node is None:
            return []
        self.counters[f"nodes_{why}"] += 1
        orphans = sorted(
            (self.tasks[t] for t in node.active if t in self.tasks),
            key=lambda r: (-r.priority, r.seq),
        )
        sends = []
        for record in orphans:
            if record.node != identity:
                continue  # already restarted elsewhere
            if record.attempt > record.retries:
                sends += self._give_up(record, node, now)
            else:
                self.counters["requeued"] += 1
                sends += self._retry_later(record, now)
        return sends

    # ------------------------------------------------------------------ views

    def status(self, now: float) -> dict[str, Any]:
        """The STATUS_REPLY body (protocol.md 3.11)."""
        return status_body(self, now)

    def check_invariants(self) -> None:
        """Raise AssertionError if the pool, the queue and the task table disagree."""
        self.pool.check_invariants()
        self.queue.check_invariants()
        self.results.check_invariants()
        queued = {r.task_id for r in self.queue}
        running: dict[str, set[bytes]] = {}
        for node in self.pool.nodes.values():
            for task_id in node.active:
                running.setdefault(task_id, set()).add(node.identity)
        for task_id, record in self.tasks.items():
            if record.node is None:
                waiting = record.retry_due is not None
                assert (task_id in queued) != waiting, f"{task_id}: queued xor waiting to retry"
                assert task_id not in running, f"queued task {task_id} holds a slot"
            else:
                assert running.get(task_id) == {record.node}, f"{task_id} is not on its node"
                assert task_id not in queued, f"running task {task_id} is also queued"
        assert queued <= self.tasks.keys(), "queue holds an answered task"
        assert not any(t in self.results for t in self.tasks), "a task is pending and answered"
        for function in self.queue.counts():
            assert not self.pool.has_free(function), f"{function} waits beside a free slot"


def _unknown_function(function: str) -> str:
    return (
        f"no registered node offers function {function!r}; start a node that provides it "
        f"(znode --functions SET) or check the name with `zbroker status`"
    )


def _wrong_way(message: p.Message) -> str:
    name = type(message).__name__
    return f"{name} is not a message the broker accepts (see protocol.md for directions)"
