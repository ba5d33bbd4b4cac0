"""The broker's scheduling core, sans-IO.

State changes only through `handle(sender, message, now)`, `refuse(...)`, `unreachable(...)`
and `tick(now)`; each returns the messages to send as `Send` commands. No sockets, no clock:
the server owns both. Payloads pass through as bytes that are never decoded here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from broker import protocol as p
from broker.dlq_ops import dead_letter_request
from broker.invariants import check_invariants
from broker.queues import TaskRecord
from broker.recovery import Recovery
from broker.taskflow import SchedulerConfig, Send
from broker.views import status_body

__all__ = ["Scheduler", "SchedulerConfig", "Send"]

log = logging.getLogger(__name__)

MAX_REPLY_TO = 8  # requesters remembered per pending task (Lazy Pirate resends add one each)


class Scheduler(Recovery):
    def __init__(
        self, config: SchedulerConfig | None = None, rng: random.Random | None = None
    ) -> None:
        super().__init__(config, rng)
        self.wall_offset = 0.0  # Unix time minus `now`, set by the server, for views only
        self._next_tick = 0.0
        self._handlers: dict[type, Callable[[bytes, Any, float], list[Send]]] = {
            p.Execute: self._on_execute,
            p.Result: self._on_result,
            p.Heartbeat: self._on_heartbeat,
            p.Register: self._on_register,
            p.Deregister: self._on_deregister,
            p.Status: self._on_status,
            p.DeadLetters: self._on_dead_letters,
            p.Error: self._on_error,
        }

    # ------------------------------------------------------------------ events

    def handle(self, sender: bytes, message: p.Message, now: float) -> list[Send]:
        """A decoded message arrived from `sender`: everything it causes."""
        sends = self.respond(sender, message, now)
        if self._answered or self._freed:
            sends += self.settle(now)
        return sends

    def respond(self, sender: bytes, message: p.Message, now: float) -> list[Send]:
        """The messages `message` causes at once. Some bookkeeping (see `settle`) waits so
        that an answer leaves first: call `settle(now)` after sending these, before the next
        event. `handle` does both."""
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
            return self._lose_node(identity, "unreachable", now) + self.settle(now)
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
        for record in self.overdue.pop_due(now):
            sends += self._overdue(record, now)
        if self.held_until is not None and now >= self.held_until:
            sends += self._release_held(now)
        sends += self.settle(now)
        self.results.expire(now)
        self._next_tick = now + interval / 4
        return sends

    def next_deadline(self) -> float:
        """When `tick` must next run (monotonic seconds, the clock `now` comes from)."""
        due = self._next_tick
        for other in (
            self.retry_timers.next_due(),
            self.deadlines.next_due(),
            self.overdue.next_due(),
            self.held_until,
        ):
            if other is not None and other < due:
                due = other
        return due

    def stop_accepting(self) -> None:
        """The broker is stopping: take no new tasks and start nothing more; what runs may
        finish, and what is queued stays queued (in the store, for the next broker)."""
        if self.accepting:
            self.accepting = False
            log.info("stopping: no new tasks; %d running may finish", self.running())

    def running(self) -> int:
        return sum(len(node.active) for node in self.pool.nodes.values())

    def shutdown(self) -> list[Send]:
        """Tell every node the broker is going away."""
        bye = p.Disconnect("broker shutting down")
        return [Send(identity, bye) for identity in self.pool.nodes]

    # ------------------------------------------------------------------ clients

    def _on_execute(self, sender: bytes, msg: p.Execute, now: float) -> list[Send]:
        if not self.accepting:
            # No answer: the client's resend (same task id) reaches the next broker.
            self.counters["ignored_stopping"] += 1
            return []
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
        held = not self.offered(msg.function, now)
        if held and (self.held_until is None or now >= self.held_until):
            self.counters["unknown_function"] += 1
            error = p.ErrorInfo("UnknownFunction", _unknown_function(msg.function))
            reply = p.TaskCompleted(msg.task_id, p.EXIT_UNKNOWN_FUNCTION, b"null", error, 0)
            return [Send(sender, reply)]
        self.counters["accepted"] += 1
        record = TaskRecord(
            msg.task_id, msg.function, msg.payload, msg.priority, self.next_seq(), [sender], now
        )
        record.retries = self.config.retry.retries if msg.retries is None else msg.retries
        record.timeout = self.config.task_timeout if msg.timeout is None else msg.timeout
        if msg.queue_timeout is not None:
            record.expires_at = now + msg.queue_timeout
        if held:  # just restarted: its node may not be back yet
            self.held.append(record)
        return self.admit(record, now)

    def _on_status(self, sender: bytes, msg: p.Status, now: float) -> list[Send]:
        return [Send(sender, p.StatusReply(self.status(now)))]

    def _on_dead_letters(self, sender: bytes, msg: p.DeadLetters, now: float) -> list[Send]:
        reply, sends = dead_letter_request(self, msg, now)
        return [Send(sender, reply), *sends]

    def _on_error(self, sender: bytes, msg: p.Error, now: float) -> list[Send]:
        log.warning("peer %s sent ERROR %s: %s", sender.hex(), msg.code, msg.message)
        self.counters["errors_received"] += 1
        return []  # never answer an error with an error

    # ------------------------------------------------------------------ nodes

    def _on_register(self, sender: bytes, msg: p.Register, now: float) -> list[Send]:
        sends = self._lose_node(sender, "re-registered", now) if sender in self.pool else []
        if msg.replaces is not None:
            sends += self._replace(msg, now)
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

    def _replace(self, msg: p.Register, now: float) -> list[Send]:
        """A supervisor restarted a node process: the old one's tasks failed with it."""
        assert msg.replaces is not None
        gone = msg.replaces
        sends: list[Send] = []
        for node in list(self.pool.nodes.values()):
            if (node.name, node.host, node.pid) == (msg.name, msg.host, gone.pid):
                text = f"node {node.name} (pid {gone.pid}) died while running it: {gone.reason}"
                error = p.ErrorInfo("WorkerCrashed", text)
                sends += self._lose_node(
                    node.identity, "crashed", now, (p.EXIT_WORKER_CRASHED, error)
                )
        return sends

    def _on_deregister(self, sender: bytes, msg: p.Deregister, now: float) -> list[Send]:
        node = self.pool.drain(sender)
        if node is None:
            return []
        self._note_offers(node, now)
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
        if node is None:
            sends = self._conclude(sender, msg, now)
            return [*sends, Send(sender, p.Disconnect("not registered: send REGISTER"))]
        if msg.exit_code != 0:  # a retry may take the slot this frees: free it first
            released = self.pool.release(node, msg.task_id)
            return self._conclude(sender, msg, now) + self._refill(node, released, now)
        sends = self._conclude(sender, msg, now)  # the answer leaves first
        self._freed.append((node, msg.task_id))  # then `settle` frees the slot and refills it
        return sends

    # ------------------------------------------------------------------ views

    def status(self, now: float) -> dict[str, Any]:
        """The STATUS_REPLY body (protocol.md 3.11)."""
        return status_body(self, now)

    def check_invariants(self) -> None:
        """Raise AssertionError if the pool, the queue and the task table disagree."""
        check_invariants(self)


def _unknown_function(function: str) -> str:
    return (
        f"no registered node offers function {function!r}; start a node that provides it "
        f"(znode --functions SET) or check the name with `zbroker status`"
    )


def _wrong_way(message: p.Message) -> str:
    name = type(message).__name__
    return f"{name} is not a message the broker accepts (see protocol.md for directions)"
