"""Scheduler: the one owner of the broker's state, sans-IO.

State changes only in `handle(event, now)` (broker.core.events) and `tick(now)`; both return
the commands for the shell to carry out, in order. No sockets, no clock: time comes in as
`now`, and payloads pass through as bytes that are never decoded here. The parts (node pool,
queue, task table, timers, kept answers, dead letters) are private; only the scheduler
changes them, and `check_invariants()` checks that they agree.

Rules the handlers keep:
- Every EXECUTE gets exactly one answer per requester; a task id that is pending or was
  answered lately is never run again (a resend joins the requesters or gets the answer).
- Only the node that holds a task's current attempt answers it: a RESULT from any other
  peer is refused, except a late one of an attempt given up on its own node (LostAttempt).
- A queued task never waits beside a free place (a slot, or room in a node's prefetch
  window) that could take it; a node with an idle slot and nothing queued for it takes back
  tasks another node holds unstarted (RETRACT), so none waits behind a long one.
- Every per-event cost is O(log n) in the tasks and nodes held (a lost node costs its tasks).

Deferred work: an answer leaves before its bookkeeping (keeping it for resends, the store,
the dead-letter queue, refilling the slot a success freed), because only the work between
a message's arrival and the send it causes is on the round trip. That work waits, as data
(`_answered`, `_freed`; the flag `deferred` says whether any does), until the next event:
the shell sends `Sent()` right after carrying out the commands, and any other event (but
those that arise while it carries them out) runs it first. `check_invariants()` accounts
for it.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from msgspec import Struct

from broker.core import journal as j
from broker.core.adoption import EarlyClaim, RestartHold
from broker.core.config import ALWAYS_RETRIED, RETRIED_ON, SchedulerConfig
from broker.core.deadletters import DeadLetter, DeadLetters
from broker.core.events import (
    Command,
    Committed,
    Event,
    HandedOver,
    HandlerFailed,
    PeerGone,
    Received,
    Restored,
    Send,
    SendDropped,
    Sent,
    Stopped,
    StopRequested,
    Undecodable,
)
from broker.core.graces import Grace, Graces
from broker.core.heartbeats import HeartbeatInterval, judged_interval
from broker.core.inputs import Pins, run_payload
from broker.core.liveness import Liveness
from broker.core.metrics import BOUNDS, FunctionMetrics, Metrics
from broker.core.nodes import RUN_TIME_WEIGHT, Node, NodePool
from broker.core.queues import TaskQueue
from broker.core.results import ResultCache, conflicting
from broker.core.scopes import SEPARATOR, plain, reference, scoped_spec, shown
from broker.core.status import listed, sampled, status_body
from broker.core.tasks import (
    DONE,
    HELD,
    QUEUED,
    RUNNING,
    UNCLAIMED,
    WAITING_DEPS,
    WAITING_RETRY,
    LostAttempt,
    ProcessKey,
    Task,
    TaskState,
    TaskTable,
)
from broker.core.timers import Timers
from broker.protocol import (
    DLQ_LIST,
    DLQ_REPLAY,
    DLQ_SHOW,
    ERR_CONFLICT,
    ERR_NOT_FOUND,
    ERR_NOT_HOLDER,
    ERR_TOO_LARGE,
    ERR_TOO_MANY_TASKS,
    ERR_UNKNOWN_COMMAND,
    ERR_UNKNOWN_DEPENDENCY,
    EXIT_BAD_RESULT,
    EXIT_CANCELLED,
    EXIT_DEPENDENCY_FAILED,
    EXIT_EXPIRED,
    EXIT_FUNCTION_ERROR,
    EXIT_NODE_LOST,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_FUNCTION,
    EXIT_WORKER_CRASHED,
    MAX_RETRACT,
    RESULT,
    RESULTS_HELD_BACK,
    WAS_FINISHED,
    WAS_HELD,
    WAS_QUEUED,
    WAS_RUNNING,
    Batch,
    Cancel,
    Cancelled,
    Claim,
    Deregister,
    Disconnect,
    Dlq,
    DlqReply,
    Error,
    ErrorInfo,
    Execute,
    Fetch,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Registered,
    Result,
    Retract,
    Retracted,
    Run,
    Status,
    StatusReply,
    Stop,
    Stored,
    TaskCompleted,
    TaskSpec,
    Waiting,
)

log = logging.getLogger("broker.core")

# The share of an interval between the heartbeat phases of nodes registered one after the
# other: the golden ratio's, whose multiples spread over [0, 1) about evenly however many.
PHASE_STEP = 0.6180339887498949
MAX_REQUESTERS = 8  # requesters remembered per pending task (Lazy Pirate resends add one each)
# Timers (and kept answers, and tasks held by an ending grace) handled per `tick`: a burst
# of them (50,000 queue deadlines at once) is spread over ticks, between which the shell
# handles the messages waiting, so that no one waits long behind it.
TICK_BUDGET = 512
NOT_REGISTERED = Disconnect("not registered: send REGISTER")
_ALL_BUSIEST = Status()  # STATUS's defaults: the busiest nodes
Failure = tuple[int, ErrorInfo]  # exit code and error of a failed attempt
# Events that arise while the shell carries out the last event's commands: the deferred
# work waits for `Sent` (a node found gone must not be given the slot it freed).
_WHILE_CARRYING_OUT = frozenset({PeerGone, SendDropped, HandlerFailed})


class TaskView(Struct, frozen=True, gc=False):
    """What the scheduler shows of a pending task (a copy: changing it changes nothing)."""

    spec: TaskSpec
    state: TaskState
    attempt: int
    holder: bytes | None
    requesters: int


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig | None = None,
        rng: random.Random | None = None,
        wall_offset: float = 0.0,
        now: float = 0.0,
        shell_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`now`: the clock's time at start (for the uptime in STATUS); `shell_status`: what
        the shell adds to STATUS_REPLY `metrics` (its messages, bytes and store commits)."""
        self.config = config = config or SchedulerConfig()
        self._rng = rng or random.Random()  # retry jitter; seeded in tests
        self._wall_offset = wall_offset  # Unix time minus `now`, for the views only
        self._pool = NodePool(config.strategy, config.max_prefetch)
        self._queue = TaskQueue()
        self._tasks = TaskTable()
        self._timers: Timers[Task | Node | Grace | RestartHold | EarlyClaim] = Timers()
        self._graces = Graces(self._timers, config.offer_grace_seconds)
        if config.start_grace:  # its nodes may not have registered yet (protocol.md 5.1)
            self._graces.after_restart(now, config.expiry)
        self._results = ResultCache(config.results)
        self._liveness = Liveness()
        self._heartbeats = HeartbeatInterval(config.heartbeat_interval, config.heartbeat_budget)
        self._dead = DeadLetters(config.dead_letters_max, config.dead_letters_max_bytes)
        self._counters: Counter[str] = Counter()
        self._metrics = Metrics(now) if config.metrics else None
        # Pending tasks by their submitter (Task.owner: its CURVE key, else its
        # connection), for the per-client limit; a submitter with none is not kept.
        self._pending_of: dict[str | bytes, int] = {}
        limit = config.max_pending_per_client
        self._max_pending = math.inf if limit is None else limit
        self._shell_status = shell_status
        self._accepting = True
        self._journal = config.journal
        # With a journal, tasks whose count of attempts changed (a RUN went out, or one came
        # back unstarted): their SaveAttempts leave with the commands of the event.
        self._attempts_changed: list[Task] = []
        self._nodes_gone: list[ProcessKey] = []  # processes left with no registration
        # Nodes that sent RESULTs since the last handover to the store: STORED is due to each
        # once the store has written it (`HandedOver`, then `Committed`); the shell reads it
        # (an attribute: it asks per loop).
        self.confirming: dict[bytes, Node] = {}
        # Replies to STATUS `stored` (protocol.md 3.10) taken since the last handover: sent
        # once the store has written it, as STORED is. The shell hands over at once while
        # any waits (an attribute: it asks per loop).
        self.awaiting_store: list[Send] = []
        # What each handover to the store not committed yet confirms: (node, RESULTs), and
        # the STATUS replies that wait for it.
        self._handed: deque[tuple[list[tuple[bytes, Node, int]], list[Send]]] = deque()
        self._hold: RestartHold | None = None  # after a restart: see broker.core.adoption
        self._early: dict[str, EarlyClaim] = {}  # claims of tasks to come, by task id
        # Everything an event causes, as commands to carry out in order: `_handle`, and with
        # a journal the store changes noted on the way (one call less per event without).
        self.handle: Callable[[Event, float], list[Command]] = (
            self._handle_journaled if config.journal else self._handle
        )
        self._default_retries = config.retry.retries
        self._default_task_timeout = config.task_timeout
        self._seq = 0  # submission numbers
        self._phase = 0.0  # the latest node's heartbeat phase (PHASE_STEP)
        self._results_checked = -math.inf  # when kept answers were last expired
        # The deferred work (see the module's docstring): answers to keep, and the slots
        # that successful RESULTs freed, as (node, task id).
        self._answered: list[tuple[Task, TaskCompleted, bool]] = []
        self._freed: list[tuple[Node, str]] = []
        # The tasks waiting (WAITING_DEPS) for each pending task they depend on; a task
        # answered meanwhile is skipped when its dependency's answer comes.
        self._dependents: dict[str, list[Task]] = {}
        self._pins = Pins()  # answers that pending tasks need as inputs
        # The pending tasks each pending task submitted from its node (EXECUTE parent):
        # cancelled with it (protocol.md 5.9).
        self._children: dict[str, list[str]] = {}
        # Whether any of that waits (read it; only the scheduler changes it): an attribute,
        # as the shell asks after every message.
        self.deferred = False
        # The sender of the message being handled (Received `key` and `admin`): the scope
        # of the tasks its EXECUTE, FETCH or CANCEL names (protocol.md 5.11).
        self._key: str | None = None
        self._admin = True
        self._events: dict[type, Callable[[Any, float], list[Command]]] = {
            Received: self._on_received,
            Sent: lambda event, now: [],
            Undecodable: self._on_undecodable,
            PeerGone: self._on_peer_gone,
            SendDropped: self._on_send_dropped,
            HandlerFailed: self._on_handler_failed,
            Restored: self._on_restored,
            Committed: self._on_committed,
            HandedOver: self._on_handed_over,
            StopRequested: self._on_stop_requested,
            Stopped: self._on_stopped,
        }
        self._messages: dict[type, Callable[[bytes, Node | None, Any, float], list[Command]]]
        self._messages = {
            Execute: self._on_execute,
            Result: self._on_result,
            Heartbeat: self._on_heartbeat,
            Register: self._on_register,
            Deregister: self._on_deregister,
            Status: self._on_status,
            Dlq: self._on_dead_letters,
            Error: self._on_error,
            Batch: self._on_batch,
            Retracted: self._on_retracted,
            Cancel: self._on_cancel,
            Fetch: self._on_fetch,
            Waiting: self._on_waiting,
        }

    # ================================================================== the entry points

    def _handle_journaled(self, event: Event, now: float) -> list[Command]:
        """`_handle`, and the store changes noted on the way (`handle` with a journal)."""
        commands = self._handle(event, now)
        if self._attempts_changed or self._nodes_gone:
            commands += self._journal_later()
        return commands

    def _journal_later(self) -> list[Command]:
        """The store changes noted on the way (after the event's own, such as its SaveTask):
        the count of attempts of tasks whose count changed, node processes gone."""
        changed, self._attempts_changed = self._attempts_changed, []
        gone, self._nodes_gone = self._nodes_gone, []
        pending = self._tasks.get  # (an answered task has no attempts to keep)
        later: list[Command] = [
            j.SaveAttempts(t.spec.task_id, t.attempt)
            for t in changed
            if pending(t.spec.task_id) is t
        ]
        return later + [j.ForgetNode(*process) for process in gone]

    def _handle(self, event: Event, now: float) -> list[Command]:
        """Everything `event` causes, as commands to carry out in order (`handle`)."""
        if self.deferred:
            if type(event) is Sent:
                return self._settle(now)
            if type(event) not in _WHILE_CARRYING_OUT:
                return self._settle(now) + self._handle(event, now)
        if type(event) is Received:  # most events: `_on_received` without its call
            peer, message = event.peer, event.message
            self._key, self._admin = event.key, event.admin
            node = self._pool.nodes.get(peer)
            if node is not None:
                node.last_seen = now  # any traffic is a sign of life
                if node.confirms and (type(message) is Result or type(message) is Batch):
                    node.results_in += 1  # a batch counts once (protocol.md 3.22)
                    self.confirming[peer] = node
            handler = self._messages.get(type(message))
            if handler is not None:
                return handler(peer, node, message, now)
        return self._events[type(event)](event, now)

    def tick(self, now: float, unread: bool = False, stall: float = 0.0) -> list[Command]:
        """What is due by `now`: timers of tasks, nodes and graces, expired answers, at most
        TICK_BUDGET of each (`next_deadline()` stays due while more are). Call it at
        `next_deadline()`, saying whether messages wait unread (no node is declared dead
        then) and how long the loop stalled just before (broker.core.liveness: the nodes'
        silence during it does not count). It leaves no deferred work."""
        commands = self._settle(now)
        self._liveness.tick(now, unread, stall)
        self._count_stall(stall)
        for _ in range(TICK_BUDGET):
            subject = self._timers.pop_due(now)
            if subject is None:
                break
            if type(subject) is Task:
                commands += self._task_due(subject, now)
            elif type(subject) is Node:
                commands += self._node_due(subject, now)
            elif type(subject) is RestartHold:
                commands += self._end_hold(subject, now)
            elif type(subject) is EarlyClaim:
                commands += self._early_claim_over(subject, now)
            else:
                assert type(subject) is Grace
                commands += self._grace_over(subject, now)
        if now >= self._results_checked + 1.0:
            self._results.expire(now, TICK_BUDGET)
            expiry = self._results.next_expiry()
            if expiry is None or expiry > now:  # else more are due: go on at the next tick
                self._results_checked = now
        commands += self._settle(now)
        if self._attempts_changed or self._nodes_gone:
            commands += self._journal_later()
        return commands

    @property
    def _expiry(self) -> float:
        """Seconds of silence after which a node is dead, at the current interval."""
        return self._heartbeats.current * self.config.liveness

    def _count_stall(self, stall: float) -> None:
        if not stall:
            return
        self._counters["loop_stalls"] += 1
        self._counters["loop_stalled_ms"] += round(stall * 1000)

    def next_deadline(self) -> float:
        """When `tick` must run next (the clock `now` comes from); -inf while deferred
        work waits, inf when nothing is due."""
        if self.deferred:
            return -math.inf
        due = self._timers.next_due()
        expiry = self._results.next_expiry()
        if expiry is not None:
            expiry = max(expiry, self._results_checked + 1.0)  # at most once a second
            due = expiry if due is None else min(due, expiry)
        return math.inf if due is None else due

    # ================================================================== views

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def counters(self) -> Mapping[str, int]:
        return MappingProxyType(self._counters)

    def running(self) -> int:
        """Attempts running on nodes."""
        return self._tasks.running

    def takes_packed(self, peer: bytes) -> bool:
        """Whether `peer` is a node that registered to take RUNs in the packed form."""
        node = self._pool.nodes.get(peer)
        return node is not None and node.packed

    def task_view(self, task_id: str) -> TaskView | None:
        """A pending task as it stands now; None when it is not pending."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        return TaskView(task.spec, task.state, task.attempt, task.holder, len(task.requesters))

    def kept_answer(self, task_id: str) -> TaskCompleted | None:
        return self._results.get(task_id)

    def pending(self) -> list[str]:
        """The ids of the pending tasks."""
        return [task.spec.task_id for task in self._tasks]

    def pinned_answers(self) -> Collection[str]:
        """The task ids whose answers pending tasks need as inputs: the store keeps them,
        whatever their age (a live view)."""
        return self._pins.ids()

    def dead_letter_ids(self) -> list[str]:
        return [entry.spec.task_id for entry in self._dead]

    def registered(self, identity: bytes) -> bool:
        return identity in self._pool.nodes

    def offered(self, function: str, now: float) -> bool:
        """Whether a node offers `function`, or a grace still counts it as offered."""
        return self._pool.offers(function) or self._graces.covering(function, now) is not None

    def status(self, now: float, request: Status = _ALL_BUSIEST) -> dict[str, Any]:
        """The STATUS_REPLY body (protocol.md 3.11), listing the nodes `request` asks for."""
        nodes, listing = listed(self._pool, request)
        body = status_body(
            self._pool,
            self._tasks,
            self._queue,
            self._results,
            self._dead,
            self.config,
            self._accepting,
            self._counters,
            now,
            nodes,
            listing,
        )
        body["heartbeat_interval"] = self._heartbeats.current
        metrics = self._metrics
        if metrics is not None:
            body["metrics"] = view = metrics.view(now, self._wall_offset)
            for node_view, node in zip(body["nodes"], nodes, strict=True):
                busy = self._busy(node, now)
                node_view["busy_seconds"] = round(busy, 3)
                node_view["utilisation"] = round(node.busy.utilisation(now, busy, node.slots), 4)
            if self._shell_status is not None:
                view.update(self._shell_status())
        return body

    # ================================================================== events

    def _on_received(self, event: Received, now: float) -> list[Command]:
        self._key, self._admin = event.key, event.admin
        return self._dispatch(event.peer, event.message, now)

    def _dispatch(self, peer: bytes, message: Message, now: float) -> list[Command]:
        """A message from `peer` to its handler (or refused, if the broker takes no such)."""
        node = self._pool.nodes.get(peer)
        if node is not None:
            node.last_seen = now  # any traffic is a sign of life
        handler = self._messages.get(type(message))
        if handler is None:
            text = f"{type(message).__name__} is not a message the broker accepts (protocol.md 1)"
            return self._refuse(peer, ProtocolError(ERR_UNKNOWN_COMMAND, text))
        return handler(peer, node, message, now)

    def _on_batch(self, peer: bytes, node: Node | None, batch: Batch, now: float) -> list[Command]:
        """Each task of the batch to its handler, as `_dispatch` would (without its call: a
        batch brings up to 256 tasks; the node is looked up again, as a task may end it)."""
        commands: list[Command] = []
        messages, nodes = self._messages, self._pool.nodes
        for item in batch.items:
            if isinstance(item, ProtocolError):
                commands += self._refuse(peer, item)
                continue
            handler = messages.get(type(item))
            if handler is None:
                commands += self._dispatch(peer, item, now)  # refused there
            else:
                commands += handler(peer, nodes.get(peer), item, now)
        return commands

    def _on_undecodable(self, event: Undecodable, now: float) -> list[Command]:
        error = event.error
        commands = self._refuse(event.peer, error)
        node = self._pool.nodes.get(event.peer)
        if node is not None and node.confirms and event.command == RESULT:
            node.results_in += 1  # counted as the node counts what it sent (3.22)
            self.confirming[event.peer] = node
        if error.code == ERR_TOO_LARGE and error.task_id and event.command == RESULT:
            # The node's work is lost, but its requesters still get their one answer.
            failed = Result(
                error.task_id, EXIT_BAD_RESULT, b"null", ErrorInfo("BadResult", error.message)
            )
            commands += self._dispatch(event.peer, failed, now)
        return commands

    def _refuse(self, peer: bytes, error: ProtocolError) -> list[Command]:
        self._counters[f"refused_{error.code}"] += 1
        count = self._counters[f"refused_{error.code}"]
        if sampled(count):
            log.warning(
                "refused a message from %s: %s (%d so far)",
                peer.hex(),
                error.message,
                count,
                extra={"task_id": error.task_id, "node": None},
            )
        return [Send(peer, Error(error.code, error.message, error.task_id))]

    def _on_peer_gone(self, event: PeerGone, now: float) -> list[Command]:
        """A send to `peer` failed. A node that held attempts gets no more work and is given
        up one heartbeat interval later (NodeLost), unless a REGISTER says meanwhile that
        its process died and how (`replaces`, protocol.md 7.4): its supervisor may be
        starting the next one."""
        self._counters["unreachable"] += 1
        node = self._pool.nodes.get(event.peer)
        if node is None:
            return []
        if not node.active:
            return self._lose_node(node, "unreachable", now)
        if node.replaced is None:
            self._stop_feeding(node, now)
            node.replaced = (now + self._heartbeats.current, None)
            self._timers.schedule(node, node.replaced[0])
        return []

    def _on_send_dropped(self, event: SendDropped, now: float) -> list[Command]:
        self._counters["send_blocked"] += 1
        count = self._counters["send_blocked"]
        if sampled(count):
            log.warning(
                "dropped a message to %s: it reads nothing and its queue is full (%d so far)",
                event.peer.hex(),
                count,
            )
        return []

    def _on_handler_failed(self, event: HandlerFailed, now: float) -> list[Command]:
        self._counters["internal_errors"] += 1
        return []

    def _on_restored(self, event: Restored, now: float) -> list[Command]:
        """Take back what a durable store kept: pending tasks queue again (nobody waits for
        them until a client resends their id), kept answers and dead letters return."""
        for answer, at in event.answers:
            self._results.add(answer, at)
        for entry in event.dead_letters:
            self._dead.add(entry)
        commands: list[Command] = []
        # Inputs come from the store's answers, whatever their age (the store keeps those
        # that pending tasks need), not from the kept answers, which may have dropped them.
        restored: dict[str, TaskCompleted] = {}
        if any(pending.spec.inputs is not None for pending in event.pending):
            restored = {answer.task_id: answer for answer, _ in event.answers}
        queued: list[Task] = []
        for pending in event.pending:
            task = self._new_task(pending.spec, pending.seq, pending.submitted_at, [])
            task.attempt = pending.attempts
            failure = self._restored_dependency_failure(task.spec)
            if failure is None:
                commands += self._admit(task, now, answers=restored)
                if task.state is QUEUED:
                    queued.append(task)
                continue
            self._add_task(task)
            self._tasks.move(task, WAITING_DEPS)
            commands += self._answer(task, failure[0], b"null", failure[1], now, bury=False)
        self._seq = max(self._seq, event.next_seq)
        if event.pending:
            self._counters["restored"] += len(event.pending)
        if event.pending or event.answers or event.dead_letters:
            # A restarted broker: its nodes have not registered again yet.
            self._graces.after_restart(now)
        if event.nodes:
            commands += self._hold_restored(queued, set(event.nodes), now)
        return commands

    # ================================================================== restarts

    def _hold_restored(
        self, tasks: list[Task], awaiting: set[ProcessKey], now: float
    ) -> list[Command]:
        """Restored tasks wait (UNCLAIMED) for the node processes that were registered to
        come back and claim the attempts they still run, at most the expiry; so do the
        tasks accepted meanwhile (`_admit`), even when none was restored: the old broker
        may have placed some of them in the milliseconds it did not store."""
        for task in tasks:
            self._queue.discard(task)
            if task.timer:  # its queue deadline, set again when it is released
                self._timers.cancel(task)
            self._tasks.move(task, UNCLAIMED)
        # As long as the processes awaited need to come back, were there many of them.
        self._heartbeats.resize(max(len(self._pool.nodes), len(awaiting)))
        self._hold = hold = RestartHold(awaiting, tasks, now + self._expiry)
        self._timers.schedule(hold, hold.until)
        log.info(
            "%d restored tasks (and those accepted meanwhile) wait up to %.1f s for %d node "
            "processes to register again and claim the attempts they still run",
            len(tasks),
            self._expiry,
            len(awaiting),
        )
        return []

    def _node_back(self, process: ProcessKey, msg: Register, now: float) -> list[Command]:
        """A node process registered while restored tasks wait for the processes that were
        registered: this one is back, and so is the one its `replaces` names (it died)."""
        hold = self._hold
        assert hold is not None
        if msg.replaces is not None:
            hold.back((msg.name, msg.host, msg.replaces.pid))
        if not hold.back(process):
            return []
        self._timers.cancel(hold)
        return self._end_hold(hold, now)

    def _end_hold(self, hold: RestartHold, now: float) -> list[Command]:
        """Every awaited process is back, or the time is up: the restored tasks that no
        node claimed are placed again (in their order); the processes still awaited are
        forgotten."""
        self._hold = None
        commands: list[Command] = []
        placed = 0
        for task in hold.tasks:
            if task.state is not UNCLAIMED or self._tasks.get(task.spec.task_id) is not task:
                continue  # adopted, answered or cancelled meanwhile
            placed += 1
            commands += self._requeue(task, now)
            deadline = task.spec.queue_timeout
            if deadline is not None and not task.attempt and not task.timer:
                self._timers.schedule(task, task.submitted_at + deadline)
        for task in hold.arrived:
            if task.state is UNCLAIMED and self._tasks.get(task.spec.task_id) is task:
                self._tasks.move(task, QUEUED)
                commands += self._admit(task, now, new=False)  # (the hold is over)
        if hold.awaiting:
            log.warning(
                "%d node processes did not register again within %.1f s of the restart; "
                "%d restored tasks no node claimed are placed again",
                len(hold.awaiting),
                self._expiry,
                placed,
            )
            if self._journal:
                commands += [j.ForgetNode(*process) for process in hold.awaiting]
        elif placed:
            log.info("every node process is back: %d unclaimed tasks placed again", placed)
        self._counters["restored_unclaimed"] += placed
        return commands

    def _on_handed_over(self, event: HandedOver, now: float) -> list[Command]:
        """The store will write what the RESULTs received so far changed: what each node
        that sent some is told once it has (`_on_committed`)."""
        confirming, self.confirming = self.confirming, {}
        waiting, self.awaiting_store = self.awaiting_store, []
        covered = [(i, node, node.results_in) for i, node in confirming.items()]
        self._handed.append((covered, waiting))
        return []

    def _on_committed(self, event: Committed, now: float) -> list[Command]:
        """The store has written the oldest handover (or, with none, all so far): each node
        that sent RESULTs it covers (and asked) is told how many of its RESULT messages are
        safe (STORED), and the STATUS replies that waited for it leave."""
        if self._handed:
            covered, replies = self._handed.popleft()
        else:
            confirming, self.confirming = self.confirming, {}
            covered = [(i, node, node.results_in) for i, node in confirming.items()]
            replies, self.awaiting_store = self.awaiting_store, []
        nodes = self._pool.nodes
        stored: list[Command] = [
            Send(identity, Stored(count))
            for identity, node, count in covered
            if nodes.get(identity) is node
        ]
        return stored + replies

    def _restored_dependency_failure(self, spec: TaskSpec) -> Failure | None:
        """Whether a restored task depends on one that failed. A dependency neither pending
        nor kept nor a dead letter finished long ago, and not with a failure that counts: it
        is taken as done."""
        for dep in spec.depends_on or ():
            if dep in self._tasks:
                continue
            failure = self._dependency_failure(dep)
            if failure is not None and failure is not _UNKNOWN:
                return failure
        return None

    def _on_stop_requested(self, event: StopRequested, now: float) -> list[Command]:
        """Start nothing more: running tasks may finish, held ones are asked back (they stay
        queued, in the store, for the next broker)."""
        if not self._accepting:
            return []
        self._accepting = False
        self._messages[Execute] = self._ignore_execute
        log.info("stopping: no new tasks; %d running may finish", self.running())
        commands: list[Command] = []
        for node in self._pool.nodes.values():
            commands += self._take_back_all(node)
        return commands

    def _on_stopped(self, event: Stopped, now: float) -> list[Command]:
        bye = Disconnect("broker shutting down")
        return [Send(identity, bye) for identity in self._pool.nodes]

    # ================================================================== clients

    def _on_execute(
        self, peer: bytes, node: Node | None, msg: Execute, now: float
    ) -> list[Command]:
        spec = msg.spec  # (a stopping broker handles EXECUTE with `_ignore_execute`)
        if self._key or msg.client or spec.depends_on is not None or SEPARATOR in spec.task_id:
            spec = scoped_spec(self._key or msg.client, spec)  # (else the id is its reference)
        task = self._tasks.get(spec.task_id)
        if task is not None:
            return self._resubmitted(peer, task, spec)
        kept = self._results.find(spec.task_id)
        if kept is not None:
            return self._answered_again(peer, spec, kept[0], kept[2])
        offered = self._pool.offers(spec.function)
        grace = None if offered else self._graces.covering(spec.function, now)
        if grace is None and not offered:
            return self._unknown_function(peer, spec)
        if spec.depends_on is not None and (refused := self._check_dependencies(peer, spec)):
            return refused
        owner = self._key or peer
        pending = self._pending_of.get(owner, 0)
        if pending >= self._max_pending:
            return self._too_many(peer, spec, pending)
        self._pending_of[owner] = pending + 1
        self._counters["accepted"] += 1
        self._seq += 1
        # `_new_task`, without its call on every task's way:
        retries = self._default_retries if spec.retries is None else spec.retries
        limit = self._default_task_timeout if spec.task_timeout is None else spec.task_timeout
        task = Task(spec, self._seq, now, [peer], retries, limit, owner=owner)
        if (metrics := self._metrics) is not None:
            fm = task.fm = metrics.functions.get(spec.function) or metrics.of(spec.function)
            fm.accepted += 1
        if grace is not None:
            grace.held.append(task)
        commands = self._admit(task, now)
        if self._journal:
            commands.append(j.SaveTask(spec, task.seq, now))
        return commands

    def _unknown_function(self, peer: bytes, spec: TaskSpec) -> list[Command]:
        """An EXECUTE of a function no node offers, nor will soon: answered 127."""
        self._counters["unknown_function"] += 1
        error = ErrorInfo("UnknownFunction", _no_node(spec.function))
        reply = TaskCompleted(plain(spec.task_id), EXIT_UNKNOWN_FUNCTION, b"null", error, 0)
        return [Send(peer, reply)]

    def _ignore_execute(
        self, peer: bytes, node: Node | None, msg: Execute, now: float
    ) -> list[Command]:
        """A stopping broker's EXECUTE: no answer; the client's resend (same task id)
        reaches the next broker."""
        self._counters["ignored_stopping"] += 1
        return []

    def _too_many(self, peer: bytes, spec: TaskSpec, pending: int) -> list[Command]:
        """An EXECUTE past the sender's limit of pending tasks: refused, nothing queued."""
        self._counters["refused_too_many_tasks"] += 1
        count = self._counters["refused_too_many_tasks"]
        who = "this connection" if self._key is None else "this client's key"
        text = (
            f"{who} has {pending} tasks pending, the most the broker takes from one client "
            "(zbroker start --max-pending-per-client); wait for answers, then send again"
        )
        if sampled(count):
            log.warning("refused a task from %s: %s (%d so far)", peer.hex(), text, count)
        return [Send(peer, Error(ERR_TOO_MANY_TASKS, text, plain(spec.task_id)))]

    def _answered_again(
        self, peer: bytes, spec: TaskSpec, answer: TaskCompleted, answered: TaskSpec | None
    ) -> list[Command]:
        """A task id answered lately: it finished already, and its requester lost the
        answer (or asks twice). Another request under that id is refused."""
        if (known := conflicting(answered, spec)) is not None:
            return self._conflict(peer, spec, known)
        self._counters["answered_again"] += 1
        return [Send(peer, shown(answer))]

    def _resubmitted(self, peer: bytes, task: Task, spec: TaskSpec) -> list[Command]:
        """A pending task's id again: a resend (Lazy Pirate) or a second submitter, which
        waits for the same answer; the task is not run again. Another request is refused."""
        if (known := conflicting(task.spec, spec)) is not None:
            return self._conflict(peer, spec, known)
        self._counters["resubmitted"] += 1
        self._add_requester(task, peer)
        return []

    def _check_dependencies(self, peer: bytes, spec: TaskSpec) -> list[Command] | None:
        """The answer to a task whose dependencies cannot all succeed (protocol.md 5.7): ERROR
        unknown_dependency for an id the broker does not know (or the task itself), TASK_COMPLETED
        66 for one that failed; None when each is pending or succeeded."""
        assert spec.depends_on is not None
        for dep in spec.depends_on:
            if dep in self._tasks and dep != spec.task_id:
                continue
            failure = self._dependency_failure(dep)
            if failure is None:
                continue
            if failure is _UNKNOWN:
                self._counters["refused_unknown_dependency"] += 1
                task_id = plain(spec.task_id)
                text = (
                    f"task {task_id} depends on {plain(dep)!r}, which the broker does not "
                    "know (never submitted, or answered longer ago than it keeps answers); a "
                    "task may depend only on tasks submitted before it (by the same client)"
                )
                return [Send(peer, Error(ERR_UNKNOWN_DEPENDENCY, text, task_id))]
            self._counters["dependency_failed"] += 1
            reply = TaskCompleted(plain(spec.task_id), failure[0], b"null", failure[1], 0)
            return [Send(peer, reply)]
        return None

    def _dependency_failure(self, dep: str) -> Failure | None:
        """Why a task that is not pending cannot be depended on: it failed (its exit code and
        error as the dependent's), or _UNKNOWN; None when it succeeded."""
        kept = self._results.find(dep)
        if kept is not None:
            answer = kept[0]
            if answer.exit_code == 0:
                return None
            spec = kept[2]
            function = None if spec is None else spec.function
            return _failed_dependency(dep, answer.exit_code, function, answer.error)
        entry = self._dead.get(dep)
        if entry is not None:
            return _failed_dependency(dep, entry.exit_code, entry.spec.function, entry.error)
        return _UNKNOWN

    def _add_requester(self, task: Task, peer: bytes) -> None:
        requesters = task.requesters
        if peer not in requesters:
            requesters.append(peer)
            del requesters[:-MAX_REQUESTERS]

    def _conflict(self, peer: bytes, spec: TaskSpec, known: TaskSpec) -> list[Command]:
        """An EXECUTE reuses the id of `known` for another request: refused (protocol.md 6)."""
        self._counters["refused_conflict"] += 1
        function = known.function
        what = "arguments" if function == spec.function else f"function ({function})"
        task_id = plain(spec.task_id)
        text = (
            f"task id {task_id!r} is already used by a task with other {what}; "
            "choose a new task id, or resend the same request to get its answer"
        )
        return [Send(peer, Error(ERR_CONFLICT, text, task_id))]

    def _on_fetch(self, peer: bytes, node: Node | None, msg: Fetch, now: float) -> list[Command]:
        """A task's answer by its id: pending, the sender waits for it as a requester; kept
        or a dead letter, at once; else not_found (protocol.md 3.19)."""
        task_id = msg.task_id  # the answers name it as sent
        ref = reference(self._key or msg.client, task_id)
        self._counters["fetched"] += 1
        task = self._tasks.get(ref)
        if task is not None:
            self._add_requester(task, peer)
            return []
        kept = self._results.find(ref)
        if kept is not None:
            return [Send(peer, shown(kept[0]))]
        entry = self._dead.get(ref)
        if entry is not None:
            reply = TaskCompleted(task_id, entry.exit_code, b"null", entry.error, entry.attempts)
            return [Send(peer, reply)]
        return [Send(peer, Error(ERR_NOT_FOUND, _unknown_task(task_id, "fetch"), task_id))]

    def _on_cancel(self, peer: bytes, node: Node | None, msg: Cancel, now: float) -> list[Command]:
        """Cancel a task (protocol.md 5.6): its requesters are answered 130 at once; a node
        that holds or runs it is told to stop it, and its place stays busy until it answers."""
        task_id = msg.task_id  # CANCELLED names it as sent
        ref = self._cancelled_ref(task_id, msg.client)
        task = self._tasks.get(ref)
        if task is None:
            if ref in self._results or self._dead.get(ref) is not None:
                return [Send(peer, Cancelled(task_id, WAS_FINISHED))]
            return [Send(peer, Error(ERR_NOT_FOUND, _unknown_task(task_id, "cancel"), task_id))]
        state = task.state
        commands: list[Command] = []
        node_name = None  # of the node that holds or runs it, for the log
        if state is RUNNING or state is HELD:
            holder = self._pool.nodes[task.holder or b""]
            was = WAS_RUNNING if state is RUNNING else WAS_HELD
            where, node_name = f" on node {holder.name}", holder.name
            commands += self._stop_on(holder, task)
        else:
            was, where = WAS_QUEUED, ""
        text = f"cancelled by a client while {was}{where} (attempt {task.attempt})"
        log.info(
            "task %s cancelled while %s%s",
            ref,
            was,
            where,
            extra={"task_id": ref, "node": node_name},
        )
        return [*self._cancel(task, text, now), *commands, Send(peer, Cancelled(task_id, was))]

    def _cancelled_ref(self, task_id: str, client: str | None) -> str:
        """The task a CANCEL names: of the sender's scope; or, from an admin, of the scope
        `task_id` names as a reference (`SCOPE|ID`, as DLQ and logs show it) when the
        sender's own scope has no such task (protocol.md 5.11)."""
        ref = reference(self._key or client, task_id)
        if (
            self._admin
            and SEPARATOR in task_id
            and ref not in self._tasks
            and (task_id in self._tasks or task_id in self._results or task_id in self._dead)
        ):
            return task_id
        return ref

    def _cancel(self, task: Task, text: str, now: float) -> list[Command]:
        """Answer `task` 130 with `text`, and cancel the tasks it submitted, and theirs."""
        children = self._children.get(task.spec.task_id, ())  # answering forgets them
        error = ErrorInfo("Cancelled", text)
        commands = self._answer(task, EXIT_CANCELLED, b"null", error, now, bury=False)
        for child_id in children:
            child = self._tasks.get(child_id)
            if child is None:
                continue  # answered already
            self._counters["cancelled_with_parent"] += 1
            if child.state is RUNNING or child.state is HELD:
                commands += self._stop_on(self._pool.nodes[child.holder or b""], child)
            why = f"the task that submitted it, {task.spec.task_id}, was cancelled"
            commands += self._cancel(child, why, now)
        return commands

    def _stop_on(self, node: Node, task: Task) -> list[Command]:
        """Tell `node` that the attempt of `task` it holds or runs is cancelled: STOP if it
        stops tasks; else RETRACT a held one (a running one runs to its end). A held task
        leaves the held order at once: the node will not start it."""
        task_id = task.spec.task_id
        held = task.state is HELD and self._pool.ask_back(node, task_id)
        if node.stop:
            return [Send(node.identity, Stop((task_id,)))]
        if held:
            return [Send(node.identity, Retract((task_id,)))]
        return []

    def _on_waiting(
        self, peer: bytes, node: Node | None, msg: Waiting, now: float
    ) -> list[Command]:
        """A task running on `node` waits for other tasks (its slot takes another task
        meanwhile), or goes on (protocol.md 5.9). Ignored for a task the node does not run."""
        if node is None:
            return [Send(peer, NOT_REGISTERED)]
        task = self._tasks.get(msg.task_id)
        if task is None or task.holder != node.identity or task.state is not RUNNING:
            self._counters["ignored_waiting"] += 1
            count = self._counters["ignored_waiting"]
            if sampled(count):
                log.warning(
                    "ignored WAITING from node %s for task %s: it does not run it (%d so far)",
                    node.name,
                    msg.task_id,
                    count,
                    extra={"task_id": msg.task_id, "node": node.name},
                )
            return []
        if not msg.waiting:
            self._pool.reclaim(node, msg.task_id)
            return []
        self._counters["waiting"] += 1
        self._pool.lend(node, msg.task_id)
        if node.held:
            self._promote(node, now)
        return self._feed(node, now)

    def _on_status(self, peer: bytes, node: Node | None, msg: Status, now: float) -> list[Command]:
        body = self.status(now, msg)
        if not self._admin and "metrics" in body:  # other clients' task ids and errors
            body["metrics"]["recent_failures"] = []
        reply = Send(peer, StatusReply(body))
        if msg.stored and self._journal:  # once what came before it is written
            self.awaiting_store.append(reply)
            return []
        return [reply]

    def _on_error(self, peer: bytes, node: Node | None, msg: Error, now: float) -> list[Command]:
        self._counters["errors_received"] += 1
        log.warning(
            "peer %s sent ERROR %s: %s",
            peer.hex(),
            msg.code,
            msg.message,
            extra={"task_id": msg.task_id, "node": None if node is None else node.name},
        )
        return []  # never answer an error with an error

    def _on_dead_letters(
        self, peer: bytes, node: Node | None, msg: Dlq, now: float
    ) -> list[Command]:
        default_retries = self.config.retry.retries
        if msg.op == DLQ_LIST:
            views = [
                e.view(self._wall_offset, default_retries) for e in self._dead.newest(msg.limit)
            ]
            reply: Message = DlqReply({"dead_letters": views, "total": len(self._dead)})
            return [Send(peer, reply)]
        if msg.op == DLQ_SHOW:
            entry = self._dead.get(msg.task_id or "")
            if entry is None:
                text = (
                    f"task {msg.task_id!r} is not in the dead-letter queue (see `zbroker dlq list`)"
                )
                return [Send(peer, Error(ERR_NOT_FOUND, text, msg.task_id))]
            view = entry.view(self._wall_offset, default_retries)
            return [Send(peer, DlqReply({"dead_letter": view}, entry.spec.args))]
        if msg.op == DLQ_REPLAY:
            return self._replay(peer, msg.task_id, now)
        purged = self._purge(msg.task_id)
        commands: list[Command] = [Send(peer, DlqReply({"purged": purged}))]
        if purged and self._journal:
            commands.append(j.ForgetDeadLetter(msg.task_id))
        return commands

    def _replay(self, peer: bytes, task_id: str | None, now: float) -> list[Command]:
        """Run dead letters again under their own ids, with a fresh count of attempts; their
        old answers are forgotten, so a resend waits for the new outcome."""
        wanted = [task_id] if task_id is not None else self.dead_letter_ids()
        replayed: list[str] = []
        missing: list[str] = []
        commands: list[Command] = []
        for tid in wanted:
            entry = self._dead.get(tid)
            if entry is None or tid in self._tasks:
                missing.append(tid)  # not dead, or submitted again meanwhile
                continue
            self._dead.remove(tid)
            self._results.forget(tid)
            self._counters["replayed"] += 1
            self._seq += 1
            task = self._new_task(entry.spec, self._seq, now, [])
            commands += self._admit(task, now)
            if self._journal:
                commands += [j.ForgetDeadLetter(tid), j.ForgetAnswer(tid)]
                commands.append(j.SaveTask(entry.spec, task.seq, now))
            replayed.append(tid)
        reply = DlqReply({"replayed": replayed, "missing": missing})
        return [Send(peer, reply), *commands]

    def _purge(self, task_id: str | None) -> int:
        if task_id is None:
            count = self._dead.clear()
        else:
            count = 0 if self._dead.remove(task_id) is None else 1
        self._counters["purged"] += count
        return count

    # ================================================================== nodes

    def _on_register(
        self, peer: bytes, node: Node | None, msg: Register, now: float
    ) -> list[Command]:
        commands = [] if node is None else self._lose_node(node, "reregistered", now)
        if msg.replaces is not None:
            commands += self._replace(msg, now)
        process = (msg.name, msg.host, msg.pid)
        earlier = self._pool.by_process(process)
        if self._journal and not earlier:
            commands.append(j.SaveNode(*process))
        node = self._pool.add(peer, msg, now)
        node.interval = node.interval_before = interval = self._heartbeats.current
        # Its first HEARTBEAT is due at a point of the interval of its own (protocol.md
        # 7.2), so that the heartbeats of nodes that registered together are spread evenly.
        self._phase = (self._phase + PHASE_STEP) % 1.0
        node.last_sent = now - interval * self._phase
        self._resize_heartbeats()
        self._schedule_check(node)
        self._counters["nodes_registered"] += 1
        log.info(
            "node %s (%s) registered: capacity %d, %d functions",
            node.name,
            node.node_id,
            node.capacity,
            len(node.functions),
        )
        if msg.attempts is not None:
            # A node that says what it still has (protocol.md 7.3): its claims are taken,
            # and any earlier registration of this process is over (it has one link).
            node.confirms = self._journal
            if msg.attempts:
                gone = msg.replaces
                replaced = None if gone is None else (msg.name, msg.host, gone.pid)
                commands += self._adopt(node, msg.attempts, now, replaced)
            for old in earlier:
                commands += self._lose_node(old, "reregistered", now)
        if self._hold is not None:
            commands += self._node_back(process, msg, now)
        config = self.config
        feed = self._feed(node, now)
        # The backlog hint once the new node has its tasks: what it alone cannot take.
        node.backlog_told = backlog = self._queue.waiting_for(node.functions)
        adopts = msg.attempts is not None
        # packed: to a node that takes packed RUNs, that packed RESULTs are read (2.5).
        registered = Registered(
            node.node_id, interval, config.liveness, backlog, node.confirms, adopts, node.packed
        )
        commands.append(Send(peer, registered))
        return commands + feed

    def _adopt(
        self, node: Node, claims: tuple[Claim, ...], now: float, replaced: ProcessKey | None
    ) -> list[Command]:
        """A registering node process claims the attempts it still runs, holds unstarted or
        holds the RESULT of (protocol.md 7.3), or whose RESULT the process it `replaced`
        handed over to it (7.4). Each one whose task is pending and not running elsewhere is
        its node's now, as if its RUN had just gone out (no second run). One of a task
        finished or unknown here is told to stop, and so is one held unstarted of a task
        that runs elsewhere now: their RESULTs are dropped without error. A running one of a
        task that runs elsewhere is left to the rules of 7.2."""
        stop: list[str] = []
        for claim in claims:
            task = self._tasks.get(claim.task_id)
            if task is not None and self._adoptable(task, node, claim, replaced):
                self._take_over(task, node, claim.attempt, now, replaced)
                continue
            if self._comes_later(task, claim.task_id):
                self._keep_early(node, claim, now)
                continue
            if task is None:
                self._counters["claims_refused"] += 1
            else:
                self._counters["claims_ignored"] += 1
            if task is None or claim.held:
                node.stopping.add(claim.task_id)
                if not claim.done:
                    stop.append(claim.task_id)
        if not stop:
            return []
        log.warning(
            "node %s claimed %d attempts of tasks finished, unknown or run elsewhere; told to stop",
            node.name,
            len(stop),
            extra={"node": node.name},
        )
        if not node.stop:
            return []  # it runs them to their end; their RESULTs are dropped
        return [
            Send(node.identity, Stop(tuple(stop[i : i + MAX_RETRACT])))
            for i in range(0, len(stop), MAX_RETRACT)
        ]

    def _adoptable(self, task: Task, node: Node, claim: Claim, replaced: ProcessKey | None) -> bool:
        """Whether `node` may take `task` over with the attempt it claims: that attempt is
        the task's latest and no other process runs it. It is so when this process's earlier
        registration (or the process it `replaced`) holds it; when the broker gave it up on
        one of those (its node was declared dead, say) and has not placed it again (for a
        held claim, an attempt that was undone when it came back unstarted); or when the
        task was restored and waits unclaimed (an attempt above the stored count was given
        out in the last milliseconds before the broker went down)."""
        if task.spec.function not in node.functions:
            return False
        attempt = claim.attempt
        if task.state is UNCLAIMED:
            return attempt >= task.attempt
        ours = (node.process, replaced)
        if task.holder is not None:
            holder = self._pool.nodes.get(task.holder)
            return (
                holder is not None
                and holder is not node
                and holder.process in ours
                and attempt == task.attempt
            )
        if task.state is not QUEUED and task.state is not WAITING_RETRY:
            return False
        if claim.held:  # unstarted there, and waiting here: it runs nowhere yet
            return task.attempt <= attempt <= task.attempt + 1
        lost = task.lost or ()
        return attempt == task.attempt and any(
            gone.attempt == attempt and gone.process in ours for gone in lost
        )

    def _take_over(
        self, task: Task, node: Node, attempt: int, now: float, replaced: ProcessKey | None
    ) -> None:
        """`node` runs (or holds the RESULT of) `attempt` of `task`: the task is its, as
        `_start` would make it, without a RUN."""
        task_id = task.spec.task_id
        if task.holder is not None:  # the process's earlier registration, about to be lost
            old = self._pool.nodes[task.holder]
            self._pool.release(old, task_id)
            task.holder = None
            if old.process != node.process:  # the process replaced: its own RESULT, should
                old.stopping.add(task_id)  # it still come, is dropped without an error
        elif task.state is QUEUED:
            self._queue.discard(task)
        if task.timer:
            self._timers.cancel(task)
        if task.lost is not None:
            ours = (node.process, replaced)
            kept = [g for g in task.lost if g.attempt != attempt or g.process not in ours]
            task.lost = kept or None
        self._counters["adopted"] += 1
        task.attempt = attempt - 1
        self._start(task, node, now)  # its RUN is not sent: the node has the task

    def _comes_later(self, task: Task | None, task_id: str) -> bool:
        """Whether a claim of `task_id` that cannot be adopted now may be once its task
        comes: the task is unknown here and not answered lately (the old broker accepted it
        in the milliseconds it did not store; the client's resend brings it), or it waits
        for its dependencies (the old broker saw them succeed)."""
        if task is None:
            return self._results.find(task_id) is None
        return task.state is WAITING_DEPS

    def _keep_early(self, node: Node, claim: Claim, now: float) -> None:
        """Keep a claim of a task to come for the expiry (broker.core.adoption)."""
        early = EarlyClaim(node, claim)
        old = self._early.get(claim.task_id)
        if old is not None:
            self._timers.cancel(old)
        self._early[claim.task_id] = early
        self._timers.schedule(early, now + self._expiry)
        self._counters["claims_early"] += 1

    def _claimed_or_held(self, task: Task, now: float) -> list[Command] | None:
        """A task about to be placed while early claims or a restart hold wait: adopted by
        the node that claimed it, or held with the restored tasks (it may be a resend of a
        task a node is still to claim); None: place it."""
        if task.spec.task_id in self._early:
            adopted = self._adopt_early(task, now)
            if adopted is not None:
                return adopted
        if self._hold is not None:
            self._tasks.move(task, UNCLAIMED)
            self._hold.arrived.append(task)
            return []
        return None

    def _adopt_early(self, task: Task, now: float) -> list[Command] | None:
        """The task of an early claim came (`_admit`): the claiming node has it, as if its
        RUN had just gone out, and the RESULT it sent meanwhile answers it. None if that
        node is gone (or the claim does not fit): the task is placed as usual."""
        early = self._early.pop(task.spec.task_id)
        self._timers.cancel(early)
        node, claim = early.node, early.claim
        if self._pool.nodes.get(node.identity) is not node:
            return None
        if task.spec.function not in node.functions:
            node.stopping.add(claim.task_id)  # (not this task: its RESULT is dropped)
            return None
        self._counters["adopted"] += 1
        task.attempt = claim.attempt - 1
        self._start(task, node, now)  # its RUN is not sent: the node has the task
        if early.result is None:
            return []
        return self._on_result(node.identity, node, early.result, now)

    def _early_claim_over(self, early: EarlyClaim, now: float) -> list[Command]:
        """No task came for an early claim within the expiry: the node is told to stop that
        attempt (if it still runs it), as a claim of an unknown task is (protocol.md 7.3)."""
        task_id, node = early.claim.task_id, early.node
        if self._early.get(task_id) is early:
            del self._early[task_id]
        if self._pool.nodes.get(node.identity) is not node:
            return []
        self._counters["claims_refused"] += 1
        if early.result is not None:
            self._counters["results_dropped"] += 1
            return []
        node.stopping.add(task_id)
        if early.claim.done or not node.stop:
            return []
        return [Send(node.identity, Stop((task_id,)))]

    def _replace(self, msg: Register, now: float) -> list[Command]:
        """A supervisor restarted a node process: the old one's tasks failed with it. Its
        own last RESULTs (a timeout's 124, a STOP's 130, sent before it ended) may still be
        on their way on its connection, which no order binds to this one: the attempts it
        holds fail as crashed only after a heartbeat interval without them (protocol.md
        7.4). It gets no new work meanwhile."""
        assert msg.replaces is not None
        gone = msg.replaces
        commands: list[Command] = []
        for node in self._pool.by_process((msg.name, msg.host, gone.pid)):
            text = f"node {node.name} (pid {gone.pid}) died while running it: {gone.reason}"
            failure = (EXIT_WORKER_CRASHED, ErrorInfo("WorkerCrashed", text))
            if not node.active:
                commands += self._lose_node(node, "crashed", now, failure)
                continue
            self._stop_feeding(node, now)
            deadline = now + self._heartbeats.current
            node.replaced = (deadline, failure)
            self._timers.schedule(node, deadline)
        return commands

    def _on_deregister(
        self, peer: bytes, node: Node | None, msg: Deregister, now: float
    ) -> list[Command]:
        if node is None or node.draining:
            return []
        self._stop_feeding(node, now)
        self._counters["nodes_deregistered"] += 1
        log.info(
            "node %s (%s) deregistered with %d tasks running",
            node.name,
            node.node_id,
            len(node.active),
        )
        if not node.active:
            self._remove_node(node)
            return []
        return self._take_back_all(node)  # what it holds runs elsewhere, not behind its last

    def _take_back_all(self, node: Node) -> list[Command]:
        """Ask `node` for every task it holds unstarted."""
        if not node.held:
            return []
        task_ids = self._pool.retract(node, node.functions, len(node.held))
        return [
            Send(node.identity, Retract(tuple(task_ids[i : i + MAX_RETRACT])))
            for i in range(0, len(task_ids), MAX_RETRACT)
        ]

    def _on_heartbeat(
        self, peer: bytes, node: Node | None, msg: Heartbeat, now: float
    ) -> list[Command]:
        if node is not None:
            return []
        self._counters["heartbeats_unknown"] += 1
        return [Send(peer, NOT_REGISTERED)]

    def _on_result(self, peer: bytes, node: Node | None, msg: Result, now: float) -> list[Command]:
        task = self._tasks.get(msg.task_id)
        if task is not None and task.holder is not None:  # RUNNING or HELD
            if task.holder == peer and (msg.attempt is None or msg.attempt == task.attempt):
                holder = node  # the common case, without a call
            else:
                holder = self._holder(task, peer, node, msg.attempt)
            if holder is not None:
                if holder.prefetch:  # how much work it may hold depends on its run time
                    if task.state is HELD:  # it ran before the broker counted a slot free
                        self._pool.start_held(holder, msg.task_id)
                        self._started(task, now)
                    holder.run_time += (now - task.started_at - holder.run_time) * RUN_TIME_WEIGHT
                if (fm := task.fm) is not None:  # `Histogram.observe`, without its call
                    ran = now - task.started_at
                    fm.run_time.counts[bisect_left(BOUNDS, ran)] += 1
                    fm.run_time.sum += ran
                    holder.busy.done += ran
                if msg.exit_code == 0:
                    # The answer leaves first:
                    commands = self._answer(task, 0, msg.result, None, now, msg.traceparent)
                    self._freed.append((holder, msg.task_id))  # then the slot is refilled
                    self.deferred = True
                    return commands
                holder.failed += 1
                released = self._release(holder, msg.task_id, now)  # a retry may take it
                commands = self._attempt_failed(task, msg, now)
                return commands + self._refill(holder, released, now)
        return self._unheld_result(task, peer, node, msg, now)

    def _unheld_result(
        self, task: Task | None, peer: bytes, node: Node | None, msg: Result, now: float
    ) -> list[Command]:
        """A RESULT from a peer that does not hold the task's current attempt: a late one
        of an attempt given up, one of a task answered meanwhile, or one refused."""
        if task is not None and self._lost_attempt(task, peer, node, msg.attempt):
            return self._late_result(task, peer, node, msg, now)
        if task is None and node is not None and msg.task_id in node.active:
            # It ran the task, which was answered meanwhile (a late attempt's success).
            self._counters["results_dropped"] += 1
            return self._refill(node, self._release(node, msg.task_id, now), now)
        early = self._early.get(msg.task_id) if self._early else None
        if early is not None and early.node is node and early.result is None:
            early.result = msg  # it answers the task, should the task come
            return []
        if node is not None and msg.task_id in node.stopping:
            # An attempt it claimed for a task finished or unknown here (protocol.md 7.3).
            node.stopping.discard(msg.task_id)
            self._counters["results_dropped"] += 1
            return []
        return self._refuse_result(peer, node, msg)

    def _holder(
        self, task: Task, peer: bytes, node: Node | None, attempt: int | None
    ) -> Node | None:
        """The node record that holds `task`'s current attempt, if the sender is that node:
        its connection, or the same process registered again on a new connection."""
        if attempt is not None and attempt != task.attempt:
            return None
        if task.holder == peer:
            return node
        if node is not None:
            holder = self._pool.nodes.get(task.holder or b"")
            if holder is not None and holder.process == node.process:
                return holder
        return None

    def _lost_attempt(
        self, task: Task, peer: bytes, node: Node | None, attempt: int | None
    ) -> bool:
        """Whether the sender held an attempt of `task` given up earlier; that attempt is
        then done with: it answers once."""
        if task.lost is None:
            return False
        process = None if node is None else node.process
        for index, lost in enumerate(task.lost):
            if lost.matches(attempt, peer, process):
                del task.lost[index]
                return True
        return False

    def _late_result(
        self, task: Task, peer: bytes, node: Node | None, msg: Result, now: float
    ) -> list[Command]:
        """A RESULT of an attempt given up on its node (declared dead, say): a success is
        the task's answer (the first success wins); a failure no longer counts."""
        commands: list[Command] = [] if node is not None else [Send(peer, NOT_REGISTERED)]
        if msg.exit_code != 0:
            self._counters["stale_failures"] += 1
            return commands
        self._counters["late_results"] += 1
        return self._answer(task, 0, msg.result, None, now, msg.traceparent) + commands

    def _refuse_result(self, peer: bytes, node: Node | None, msg: Result) -> list[Command]:
        """A RESULT from a peer that holds no attempt of that task: forged, misdirected, or
        for a task answered long ago. It changes nothing."""
        self._counters["refused_not_holder"] += 1
        count = self._counters["refused_not_holder"]
        if sampled(count):
            who = "an unregistered peer" if node is None else f"node {node.name}"
            log.warning(
                "refused a RESULT for task %s from %s (%s), which does not hold it (%d so far)",
                msg.task_id,
                who,
                peer.hex(),
                count,
                extra={"task_id": msg.task_id, "node": None if node is None else node.name},
            )
        if node is None:
            return [Send(peer, NOT_REGISTERED)]
        text = f"this node does not hold an attempt of task {msg.task_id}; its RESULT is ignored"
        return [Send(peer, Error(ERR_NOT_HOLDER, text, msg.task_id))]

    # ================================================================== timers

    def _task_due(self, task: Task, now: float) -> list[Command]:
        if task.state is QUEUED or task.state is WAITING_DEPS:
            return self._expire(task, now)
        if task.state is WAITING_RETRY:
            return self._requeue(task, now)
        if task.state is HELD:
            return self._retract_expired(task, now)
        return self._overdue(task, now)

    def _node_due(self, node: Node, now: float) -> list[Command]:
        """A node's heartbeat and liveness check, about once an interval: dead after `expiry`
        of silence; sent a HEARTBEAT, with the backlog hint, after an interval in which it
        was sent nothing else, and also whenever the hint is non-zero or has changed since
        it was last told (even to a node that got other messages: its supervisor scales on
        it, protocol.md 3.4). The hint costs a look-up per function of the node."""
        config = self.config
        if node.replaced is not None:  # its last RESULTs did not come: it crashed with them
            deadline, failure = node.replaced
            if now < deadline:
                self._timers.schedule(node, deadline)
                return []
            if failure is None:  # unreachable, and no process said it replaced it
                return self._lose_node(node, "unreachable", now)
            return self._lose_node(node, "crashed", now, failure)
        interval = judged_interval(
            node.interval, node.interval_before, node.interval_changed, config.liveness, now
        )
        again = self._liveness.dead(node.last_seen, now, interval * config.liveness)
        if again is None:
            log.warning(
                "node %s (%s) silent for %.2fs: declared dead",
                node.name,
                node.node_id,
                self._liveness.silence(node.last_seen, now),
            )
            return self._lose_node(node, "expired", now)
        if self._metrics is not None and node.busy.window.due(now):
            node.busy.window.sample(now, self._busy(node, now))
        commands: list[Command] = []
        backlog = self._queue.waiting_for(node.functions)
        told = self._tell_interval(node, now)
        if (
            backlog
            or backlog != node.backlog_told
            or told is not None
            or now - node.last_sent >= node.interval
        ):
            node.last_sent = now
            node.backlog_told = backlog
            commands.append(Send(node.identity, Heartbeat(backlog, told)))
        self._timers.schedule(node, min(again, node.last_sent + node.interval))
        return commands

    def _tell_interval(self, node: Node, now: float) -> float | None:
        """The new heartbeat interval to tell `node` in this HEARTBEAT, if it takes one and
        the interval changed since it was told (broker.core.heartbeats); else None."""
        current = self._heartbeats.current
        if not node.adopts_interval or node.interval == current:
            return None
        node.interval_before, node.interval = node.interval, current
        node.interval_changed = now
        return current

    def _resize_heartbeats(self) -> None:
        """The node count changed: the heartbeat interval may grow or shrink with it."""
        heartbeats = self._heartbeats
        before = heartbeats.current
        if heartbeats.resize(len(self._pool.nodes)):
            log.info(
                "heartbeat interval %.3g s (was %.3g s) for %d nodes: at most %d node "
                "heartbeats a second",
                heartbeats.current,
                before,
                len(self._pool.nodes),
                heartbeats.budget,
            )

    def _busy(self, node: Node, now: float) -> float:
        """`node`'s slot-seconds of running so far: its answered attempts and, of those it
        runs now, the time since each started (O(its tasks))."""
        busy = node.busy.done
        for task_id in node.active:
            task = self._tasks.get(task_id)
            if task is not None and task.state is RUNNING and task.holder == node.identity:
                busy += now - task.started_at
        return busy

    def _schedule_check(self, node: Node) -> None:
        expiry = node.interval * self.config.liveness
        due = min(node.last_seen + expiry, node.last_sent + node.interval)
        self._timers.schedule(node, due)

    def _expire(self, task: Task, now: float) -> list[Command]:
        """A queued task was not started by its queue deadline: answer it Expired."""
        self._counters["expired"] += 1
        waited = now - task.submitted_at
        text = (
            f"not started within its queue timeout ({waited:.3g} s waited): no free node "
            f"offering {task.spec.function!r}"
        )
        return self._answer(task, EXIT_EXPIRED, b"null", ErrorInfo("Expired", text), now)

    def _overdue(self, task: Task, now: float) -> list[Command]:
        """A node did not answer a task by its task timeout plus the grace: it does not stop its
        functions, so the broker stops using it (protocol.md 5.3)."""
        node = self._pool.nodes[task.holder or b""]
        log.warning(
            "node %s (%s) did not answer task %s within its %g s task timeout: disconnected",
            node.name,
            node.node_id,
            task.spec.task_id,
            task.task_timeout,
            extra={"task_id": task.spec.task_id, "node": node.name},
        )
        text = (
            f"exceeded its timeout of {task.task_timeout:g} s on node {node.name}, which did "
            f"not stop it (attempt {task.attempt})"
        )
        failure = (EXIT_TIMEOUT, ErrorInfo("Timeout", text))
        commands: list[Command] = [
            Send(node.identity, Disconnect("did not stop a task past its timeout"))
        ]
        return commands + self._lose_node(node, "overdue", now, failure, task.spec.task_id)

    # ================================================================== graces

    def _stop_feeding(self, node: Node, now: float) -> None:
        """`node` takes no more work (it drains): the functions it was the last to offer
        stay offered for a grace, so that their tasks wait for a node to come back."""
        if node.draining:
            return
        self._pool.drain(node.identity)
        for function in node.functions:
            if not self._pool.offers(function):
                self._graces.after_last_node(function, now)

    def _grace_over(self, grace: Grace, now: float) -> list[Command]:
        """Tasks accepted only thanks to the grace that still have no node are refused as
        they would have been at once (exit 127, attempts 0; not dead letters), TICK_BUDGET
        at a time."""
        commands: list[Command] = []
        for task in self._graces.ending(grace, now, TICK_BUDGET):
            function = task.spec.function
            state = task.state
            pending = self._tasks.get(task.spec.task_id) is task
            waiting = pending and (state is QUEUED or state is WAITING_DEPS or state is UNCLAIMED)
            if not waiting or task.attempt or self._pool.offers(function):
                continue
            other = self._graces.covering(function, now)
            if other is not None:
                other.held.append(task)
                continue
            self._counters["unknown_function"] += 1
            why = "after its last node left" if grace.function else "after the broker restarted"
            text = f"no node offering {function!r} registered within the grace {why}"
            error = ErrorInfo("UnknownFunction", text)
            commands += self._answer(task, EXIT_UNKNOWN_FUNCTION, b"null", error, now, bury=False)
        return commands

    # ================================================================== how tasks move

    def _new_task(
        self, spec: TaskSpec, seq: int, submitted_at: float, requesters: list[bytes]
    ) -> Task:
        retries = self._default_retries if spec.retries is None else spec.retries
        limit = self._default_task_timeout if spec.task_timeout is None else spec.task_timeout
        task = Task(spec, seq, submitted_at, requesters, retries, limit)
        if self._metrics is not None:
            task.fm = self._metrics.of(spec.function)
        return task

    def _add_task(self, task: Task) -> None:
        self._tasks.add(task)
        spec = task.spec
        if spec.inputs is not None or spec.parent is not None:
            self._note_relations(spec)

    def _note_relations(self, spec: TaskSpec) -> None:
        """A task added to the table that takes inputs (their answers are pinned) or was
        submitted by a pending task (it is cancelled with it)."""
        if spec.inputs is not None:
            self._pins.add(spec.inputs)
        if spec.parent is not None and spec.parent in self._tasks:
            self._children.setdefault(spec.parent, []).append(spec.task_id)

    def _admit(
        self,
        task: Task,
        now: float,
        new: bool = True,
        answers: Mapping[str, TaskCompleted] | None = None,
    ) -> list[Command]:
        """Take a new (or replayed, or restored) task: start it or queue it (in its turn
        among its priority's submitters), or, while tasks it depends on are pending, let it
        wait for them. `new` False: a task of the table whose dependencies all succeeded,
        QUEUED again. `answers`: where a restored task's inputs answered already are found
        (else among the kept answers)."""
        if new:
            spec = task.spec
            self._tasks.add(task)
            if spec.inputs is not None or spec.parent is not None:
                self._note_relations(spec)
            if spec.depends_on is not None:
                held = self._hold_for_dependencies(task, now, answers)
                if held is not None:
                    return held
        if self._early or self._hold is not None:
            claimed = self._claimed_or_held(task, now)
            if claimed is not None:
                return claimed
        function = task.spec.function
        if self._accepting and not self._queue.has(function):
            node = self._pool.pick(function)
            if node is not None:
                return [self._start(task, node, now)]
        self._queue.push(task)
        deadline = task.spec.queue_timeout
        if deadline is not None and not task.attempt and not task.timer:
            self._timers.schedule(task, task.submitted_at + deadline)
        return []

    def _hold_for_dependencies(
        self, task: Task, now: float, answers: Mapping[str, TaskCompleted] | None
    ) -> list[Command] | None:
        """A new task that depends on others: it waits for those pending, or is answered
        when an input is lost (the commands); None when it may start now (its payload
        built if it takes inputs)."""
        spec = task.spec
        assert spec.depends_on is not None
        task_id = spec.task_id
        pending = [dep for dep in spec.depends_on if dep in self._tasks and dep != task_id]
        if spec.inputs is not None:
            lost = self._gather_inputs(task, answers)
            if lost is not None:
                self._tasks.move(task, WAITING_DEPS)
                return self._answer(task, *lost, now, bury=False)
        if pending:
            return self._wait_for(task, pending, now)
        if spec.inputs is not None:
            task.run_args = self._run_payload(task)
        return None

    def _gather_inputs(
        self, task: Task, answers: Mapping[str, TaskCompleted] | None
    ) -> tuple[int, bytes, ErrorInfo] | None:
        """Take the results of `task`'s inputs that are answered already; the answer to give
        it instead when one of them is no longer known (a broker restarted on an old store,
        or a replay long after)."""
        inputs = task.spec.inputs
        assert inputs is not None
        got = task.inputs_got = {}
        for dep in inputs:
            if dep in self._tasks:
                continue
            answer = None if answers is None else answers.get(dep)
            if answer is None:
                kept = self._results.find(dep)
                answer = None if kept is None else kept[0]
            if answer is None or answer.exit_code != 0:
                text = (
                    f"the result of its input {dep} is no longer kept at the broker; "
                    "submit that task and this one again"
                )
                return EXIT_DEPENDENCY_FAILED, b"null", ErrorInfo("DependencyFailed", text)
            got[dep] = answer.result
        return None

    @staticmethod
    def _run_payload(task: Task) -> bytes:
        """The payload of `task`'s RUNs, once each of its inputs has its result."""
        got, inputs = task.inputs_got, task.spec.inputs
        assert got is not None and inputs is not None
        payload = run_payload(task.spec.args, [got[dep] for dep in inputs])
        task.inputs_got = None
        return payload

    def _wait_for(self, task: Task, pending: list[str], now: float) -> list[Command]:
        """`task` waits (not queued) until the `pending` tasks it depends on succeed."""
        self._tasks.move(task, WAITING_DEPS)
        task.waiting_for = len(pending)
        for dep in pending:
            self._dependents.setdefault(dep, []).append(task)
        deadline = task.spec.queue_timeout
        if deadline is not None and not task.attempt:
            self._timers.schedule(task, task.submitted_at + deadline)
        return []

    def _release_dependents(
        self, answer: TaskCompleted, function: str, now: float
    ) -> list[Command]:
        """A task was answered: each task waiting for it starts if this was the last it
        waited for, or, if it failed or was cancelled, is answered so too (66 or 130; their
        own dependents follow when their answers are settled)."""
        waiting = self._dependents.pop(answer.task_id, None)
        if waiting is None:
            return []
        commands: list[Command] = []
        for task in waiting:
            if task.state is not WAITING_DEPS:
                continue  # answered meanwhile (cancelled, expired)
            if answer.exit_code == 0:
                got, inputs = task.inputs_got, task.spec.inputs
                if got is not None and inputs is not None and answer.task_id in inputs:
                    got[answer.task_id] = answer.result
                task.waiting_for -= 1
                if not task.waiting_for:
                    if task.inputs_got is not None:
                        task.run_args = self._run_payload(task)
                    self._tasks.move(task, QUEUED)
                    commands += self._admit(task, now, new=False)
                continue
            code, error = _failed_dependency(
                answer.task_id, answer.exit_code, function, answer.error
            )
            self._counters["dependency_failed"] += 1
            commands += self._answer(task, code, b"null", error, now, bury=False)
        return commands

    def _start(self, task: Task, node: Node, now: float) -> Send:
        """Send `task` to `node`, which runs it in a free slot or holds it (prefetch)."""
        task.attempt += 1
        task.holder = node.identity
        if self._journal:  # a restarted broker must know this attempt went out
            self._attempts_changed.append(task)
        spec = task.spec
        node.last_sent = now
        if self._pool.assign(node, spec.task_id, spec.function):
            # `_started`, without its call on every task's way (a task sent now is not
            # being asked back: its `expiring` is already False):
            self._tasks.move(task, RUNNING)
            task.started_at = now
            if (fm := task.fm) is not None:  # `_count_start`, without its call
                fm.started += 1
                if task.attempt == 1:
                    wait = now - task.submitted_at
                    fm.queue_wait.counts[bisect_left(BOUNDS, wait)] += 1
                    fm.queue_wait.sum += wait
            if task.task_timeout is not None:
                self._timers.schedule(task, now + task.task_timeout + self.config.overdue_grace)
            elif task.timer:
                self._timers.cancel(task)
        else:
            self._held_on(task)
        run_args = task.run_args
        task_timeout = task.task_timeout
        if run_args is None:
            run = Run(
                spec.task_id,
                spec.function,
                spec.args,
                task.attempt,
                task_timeout,
                None,
                spec.traceparent,
            )
        else:  # with its inputs' results (protocol.md 5.8)
            inputs, trace = _as_sent(spec.inputs), spec.traceparent
            run = Run(
                spec.task_id, spec.function, run_args, task.attempt, task_timeout, inputs, trace
            )
        return Send(node.identity, run)

    def _held_on(self, task: Task) -> None:
        """`task` went to a node that holds it behind others (prefetch, protocol.md 5.5):
        its queue timeout still runs until it starts, if this is its first attempt."""
        self._tasks.move(task, HELD)
        if task.attempt > 1:  # its queue timeout no longer applies
            if task.timer:
                self._timers.cancel(task)
        elif not task.timer and task.spec.queue_timeout is not None:  # not started yet
            self._timers.schedule(task, task.submitted_at + task.spec.queue_timeout)

    def _release(self, node: Node, task_id: str, now: float) -> bool:
        """`node` answered `task_id`: its place frees, and a task it holds starts in the slot
        (the node runs what it holds in order, protocol.md 5.5)."""
        released = self._pool.release(node, task_id)
        if released and node.held:
            self._promote(node, now)
        return released

    def _promote(self, node: Node, now: float) -> None:
        """The tasks `node` holds that its free slots start now: their task timeouts run."""
        while True:
            task_id = self._pool.promote(node)
            if task_id is None:
                return
            task = self._tasks.get(task_id)
            if task is not None and task.holder == node.identity:
                self._started(task, now)
            # else answered meanwhile (a late attempt's success): its RESULT is dropped

    def _feed(self, node: Node, now: float) -> list[Command]:
        """Fill `node`'s window from the queue (an idle node takes the next tasks); a slot
        left idle takes back tasks another node holds unstarted."""
        commands: list[Command] = []
        queue = self._queue
        if node.draining or not self._accepting:
            return commands
        while queue.size and len(node.active) < node.window:
            task = queue.pop_for(node.functions)
            if task is None:
                break
            commands.append(self._start(task, node, now))
        if self._pool.held and node.idle_slot:
            commands += self._take_back_for(node)
        return commands

    def _take_back_for(self, thief: Node) -> list[Command]:
        """Ask a node that holds unstarted tasks `thief` offers for some of them back (half,
        at most what `thief` can take); they are placed again when they come back."""
        for victim in self._pool.holders(thief.functions):
            if victim is thief:
                continue
            most = min(max(1, len(victim.held) // 2), thief.free, MAX_RETRACT)
            task_ids = self._pool.retract(victim, thief.functions, most)
            if task_ids:
                self._counters["retracts_sent"] += 1
                return [Send(victim.identity, Retract(tuple(task_ids)))]
        return []

    def _refill(self, node: Node, released: bool, now: float) -> list[Command]:
        """A RESULT came from `node`: a draining node that runs nothing more is gone; else
        if it freed a place, the place takes the next queued task (or one taken back)."""
        if node.draining and not node.active:
            self._remove_node(node)
            return []
        if released and (self._queue.size or self._pool.held):
            return self._feed(node, now)
        return []

    def _on_retracted(
        self, peer: bytes, node: Node | None, msg: Retracted, now: float
    ) -> list[Command]:
        """A node's answer to RETRACT: what it gave back is placed again with its attempt
        undone (or answered Expired if its queue timeout passed); what it started runs."""
        if node is None:
            return [Send(peer, NOT_REGISTERED)]
        for task_id in msg.started:
            if task_id not in node.retracting:
                continue  # answered meanwhile
            self._pool.start_held(node, task_id)
            task = self._tasks.get(task_id)
            if task is not None and task.holder == node.identity and task.state is HELD:
                self._started(task, now)
        commands: list[Command] = []
        for task_id in msg.returned:
            if not self._pool.given_back(node, task_id):
                continue  # not asked back, or answered meanwhile
            task = self._tasks.get(task_id)
            if task is None or task.holder != node.identity or task.state is not HELD:
                continue
            commands += self._unstarted(task, now)
            self._counters["retracted"] += 1
        if node.draining and not node.active:
            self._remove_node(node)
        elif self._queue.size:
            commands += self._feed(node, now)
        return commands

    def _started(self, task: Task, now: float) -> None:
        """`task`'s attempt has started on its node (a free slot took it, or one freed for it
        while its node held it): its task timeout runs from now; its queue timeout is over."""
        self._tasks.move(task, RUNNING)
        task.started_at = now
        task.expiring = False
        if task.fm is not None:
            self._count_start(task.fm, task, now)
        if task.task_timeout is not None:
            self._timers.schedule(task, now + task.task_timeout + self.config.overdue_grace)
        elif task.timer:
            self._timers.cancel(task)

    def _count_start(self, fm: FunctionMetrics, task: Task, now: float) -> None:
        fm.started += 1
        if task.attempt == 1:
            fm.queue_wait.observe(now - task.submitted_at)

    def _unstarted(self, task: Task, now: float, undo: bool = True) -> list[Command]:
        """A task its node held never started (given back, or the node was lost): the
        attempt is undone (unless it may have started after all) and it is placed again,
        or answered Expired if it was asked back for its queue timeout."""
        if undo:
            task.attempt -= 1
        task.holder = None
        if self._journal:
            self._attempts_changed.append(task)
        if task.expiring:
            task.expiring = False
            return self._expire(task, now)
        return self._requeue(task, now)

    def _retract_expired(self, task: Task, now: float) -> list[Command]:
        """A held task's queue timeout passed before it started: ask its node for it back;
        if it comes back unstarted it is answered Expired."""
        node = self._pool.nodes[task.holder or b""]
        task.expiring = True
        if not self._pool.ask_back(node, task.spec.task_id):
            return []  # asked back already
        return [Send(node.identity, Retract((task.spec.task_id,)))]

    def _attempt_failed(self, task: Task, msg: Result, now: float) -> list[Command]:
        if task.attempt <= task.retries and self._retried(task, msg.exit_code, msg.retry):
            return self._retry_later(task, now)
        return self._answer(task, msg.exit_code, msg.result, msg.error, now, msg.traceparent)

    def _retried(self, task: Task, exit_code: int, declared: bool = False) -> bool:
        """Whether a failed attempt with `exit_code` earns another (protocol.md 5.1), when
        one is left: a crash always; the function raising when its set declared that
        exception retryable (`declared`) or `retry_on` names it; a timeout when `retry_on`
        names it."""
        if exit_code in ALWAYS_RETRIED:
            return True
        name = RETRIED_ON.get(exit_code)
        if name is None:
            return False
        retry_on = task.spec.retry_on
        if retry_on is None:
            retry_on = self.config.retry_on
        return name in retry_on or (declared and exit_code == EXIT_FUNCTION_ERROR)

    def _retry_later(self, task: Task, now: float) -> list[Command]:
        self._counters["retried"] += 1
        if task.fm is not None:
            task.fm.retried += 1
        task.holder = None
        delay = self.config.retry.delay(task.attempt, self._rng)
        if delay <= 0:
            return self._requeue(task, now)
        self._tasks.move(task, WAITING_RETRY)
        self._timers.schedule(task, now + delay)
        return []

    def _requeue(self, task: Task, now: float) -> list[Command]:
        """Run `task` again now if a slot is free, else queue it (it keeps its place)."""
        node = self._pool.pick(task.spec.function) if self._accepting else None
        if node is not None:
            return [self._start(task, node, now)]
        self._tasks.move(task, QUEUED)
        if task.timer and task.attempt:  # else the timer is its queue deadline: it stays
            self._timers.cancel(task)
        self._queue.push(task, again=True)
        return []

    def _answer(
        self,
        task: Task,
        exit_code: int,
        result: bytes,
        error: ErrorInfo | None,
        now: float,
        trace: str | None = None,
        bury: bool = True,
    ) -> list[Command]:
        """Answer a pending task: its TASK_COMPLETED to every requester, with the trace
        context of the attempt that gave it (`trace`). Keeping the answer, the store, the
        counters and the dead-letter queue wait (see `deferred`)."""
        if task.state is QUEUED:
            self._queue.discard(task)
        if task.timer:
            self._timers.cancel(task)
        task.holder = None
        self._tasks.move(task, DONE)
        owner = task.owner
        if owner is not None:  # its submitter may have one more pending
            left = self._pending_of[owner] - 1
            if left:
                self._pending_of[owner] = left
            else:
                del self._pending_of[owner]
        spec = task.spec
        if spec.inputs is not None:  # its inputs' answers need no keeping for it now
            self._pins.remove(spec.inputs)
        if self._children:
            self._children.pop(spec.task_id, None)
        reply = TaskCompleted(spec.task_id, exit_code, result, error, task.attempt, trace)
        self._answered.append((task, reply, bury))
        self.deferred = True
        if SEPARATOR in spec.task_id:  # `shown`, without its call for most tasks
            reply = shown(reply)
        requesters = task.requesters
        if len(requesters) == 1:  # the common case, without a comprehension's call
            return [Send(requesters[0], reply)]
        return [Send(peer, reply) for peer in requesters]

    def _give_up(
        self, task: Task, node: Node, now: float, failure: Failure | None
    ) -> list[Command]:
        """The task failed on its last allowed attempt: answer it (NodeLost by default)."""
        if failure is None:
            text = (
                f"node {node.name} stopped answering while running it, on attempt "
                f"{task.attempt} of {task.retries + 1}"
            )
            failure = (EXIT_NODE_LOST, ErrorInfo("NodeLost", text))
        return self._answer(task, failure[0], b"null", failure[1], now)

    def _settle(self, now: float) -> list[Command]:
        """Run the deferred work: keep the answers (for resends), store them, count them,
        bury the failures, and give the slots that RESULTs freed their next tasks."""
        commands: list[Command] = []
        answered = self._answered
        for task, reply, bury in answered:  # grows while dependents are answered
            self._count_answer(task, reply, now)
            self._results.add(reply, now, task.spec)
            if self._journal:
                commands.append(j.SaveAnswer(reply, now))
            if reply.exit_code != 0 and bury:
                commands += self._bury(task, reply, now)
            if self._dependents:
                commands += self._release_dependents(reply, task.spec.function, now)
        answered.clear()
        self.deferred = False  # the answers are settled; the freed slots are next
        if self._freed:
            commands += self._refill_freed(now)
        return commands

    def _refill_freed(self, now: float) -> list[Command]:
        """The places that successful RESULTs freed, node by node (most often one node's
        RESULT message): released together, then held tasks promoted, then the node fed
        once, as `_release` and `_refill` would for each."""
        freed, self._freed = self._freed, []
        if len(freed) == 1:  # a RESULT of one task, without grouping
            return self._refill_after(freed[0][0], (freed[0][1],), now)
        by_node: dict[Node, list[str]] = {}
        for node, task_id in freed:
            task_ids = by_node.get(node)
            if task_ids is None:
                by_node[node] = [task_id]
            else:
                task_ids.append(task_id)
        commands: list[Command] = []
        for node, task_ids in by_node.items():
            commands += self._refill_after(node, task_ids, now)
        return commands

    def _refill_after(self, node: Node, task_ids: Sequence[str], now: float) -> list[Command]:
        """`node` answered `task_ids`: their places free, a task it holds starts in a free
        slot, and the node takes the next queued tasks (unless it was lost meanwhile)."""
        pool = self._pool
        if pool.nodes.get(node.identity) is not node:  # lost meanwhile
            return []
        released = pool.release_all(node, task_ids) > 0
        if released and node.held:
            self._promote(node, now)
        if node.draining or (released and (self._queue.size or pool.held)):
            return self._refill(node, released, now)
        return []

    def _count_answer(self, task: Task, reply: TaskCompleted, now: float) -> None:
        """The counters and metrics of an answer."""
        exit_code = reply.exit_code
        if exit_code == 0:
            self._counters["completed"] += 1
        elif exit_code == EXIT_CANCELLED:
            self._counters["cancelled"] += 1
        else:
            self._counters["failed"] += 1
        if (metrics := self._metrics) is not None:
            metrics.answer(task.fm or metrics.of(task.spec.function), task, reply, now)

    def _bury(self, task: Task, reply: TaskCompleted, now: float) -> list[Command]:
        """A task that failed for good goes to the dead-letter queue."""
        self._counters["dead_lettered"] += 1
        if task.fm is not None:
            task.fm.dead_lettered += 1
        entry = DeadLetter(task.spec, reply.attempts, reply.exit_code, reply.error, now)
        self._dead.add(entry)
        return [j.SaveDeadLetter(entry)] if self._journal else []

    # ================================================================== losing nodes

    def _remove_node(self, node: Node) -> None:
        self._pool.remove(node.identity)
        self._timers.cancel(node)
        self._resize_heartbeats()
        if self._journal and not self._pool.by_process(node.process):
            self._nodes_gone.append(node.process)

    def _lose_node(
        self,
        node: Node,
        why: str,
        now: float,
        failure: Failure | None = None,
        only: str | None = None,
    ) -> list[Command]:
        """Forget a node; each attempt it held is lost: retried or answered. The answer says
        NodeLost unless `failure` gives the cause (for every task, or with `only` for that
        task alone)."""
        # The oldest held tasks may have started in slots freed before their RESULTs came:
        # as many as it ran, plus RESULTS_HELD_BACK for the RESULTs a node may keep unsent
        # to send them together (protocol.md 5.5). Their attempts stay counted.
        maybe_started = set(itertools.islice(node.held, node.running + RESULTS_HELD_BACK))
        self._stop_feeding(node, now)
        self._remove_node(node)
        self._counters[f"nodes_{why}"] += 1
        on_node = [self._tasks.get(task_id) for task_id in node.active]
        orphans = sorted(
            (t for t in on_node if t is not None and t.holder == node.identity),
            key=lambda t: (-t.spec.priority, t.seq),
        )
        commands: list[Command] = []
        for task in orphans:
            if task.state is HELD:  # not started there, as far as the broker knows
                self._counters["requeued_unstarted"] += 1
                commands += self._unstarted(task, now, task.spec.task_id not in maybe_started)
                continue
            lost = LostAttempt(task.attempt, node.identity, node.process)
            if task.lost is None:
                task.lost = [lost]
            else:
                task.lost.append(lost)
            reason = failure if only is None or only == task.spec.task_id else None
            given_up = reason is not None and not self._retried(task, reason[0])
            if given_up or task.attempt > task.retries:
                commands += self._give_up(task, node, now, reason)
            else:
                self._counters["requeued"] += 1
                commands += self._retry_later(task, now)
        return commands

    # ================================================================== checks

    def _check_dependents(self) -> None:
        """A task waiting for dependencies is listed under each pending one it counts; one
        with inputs has its payload once it no longer waits; the pins count the inputs."""
        for task in self._tasks:
            if task.state is WAITING_DEPS:
                waits = sum(
                    any(waiting is task for waiting in self._dependents.get(dep, ()))
                    for dep in task.spec.depends_on or ()
                )
                assert task.waiting_for == waits > 0, f"{task.spec.task_id}: waits for {waits}"
            elif task.spec.inputs is not None:
                assert task.run_args is not None, f"{task.spec.task_id}: inputs, no payload"
        needed = [task.spec.inputs for task in self._tasks]
        self._pins.check_invariants(inputs for inputs in needed if inputs is not None)

    def check_invariants(self) -> None:
        """Raise AssertionError if the parts disagree (the deferred work accounted for)."""
        self._pool.check_invariants()
        self._queue.check_invariants()
        self._dead.check_invariants()
        self._tasks.check_invariants()
        self._results.check_invariants()
        self._timers.check_invariants()
        queued = {id(task) for task in self._queue}
        nodes = self._pool.nodes
        for task in self._tasks:
            task_id = task.spec.task_id
            assert (task.state is QUEUED) == (id(task) in queued), f"{task_id}: queued iff QUEUED"
            assert task_id not in self._results, f"{task_id} is pending and answered"
            assert len(task.requesters) <= MAX_REQUESTERS
            if task.state is RUNNING or task.state is HELD:
                holder = nodes.get(task.holder or b"")
                assert holder is not None, f"{task_id} runs on a node that is gone"
                assert task_id in holder.active, f"{task_id} is not on its node"
                unstarted = task_id in holder.held or task_id in holder.retracting
                assert unstarted == (task.state is HELD), f"{task_id}: HELD iff its node holds it"
            if task.state is WAITING_RETRY:
                assert task.timer, f"{task_id} waits for a retry that has no timer"
        for node in nodes.values():
            for task_id in node.active:
                held = self._tasks.get(task_id)
                assert held is None or held.holder == node.identity, f"{task_id} on two nodes"
        assert self.deferred == bool(self._answered or self._freed), "deferred flag drifted"
        owned = Counter(task.owner for task in self._tasks if task.owner is not None)
        assert owned == self._pending_of, "the pending counts per client drifted"
        self._check_dependents()
        deferred = {task.spec.task_id for task, _, _ in self._answered}
        assert not deferred & {t.spec.task_id for t in self._tasks}, "deferred answer pending"
        for node, task_id in self._freed:
            assert task_id not in self._tasks, f"freed slot of {task_id} whose task is pending"
            lost = nodes.get(node.identity) is not node
            assert lost or task_id in node.active, f"freed slot of {task_id} already free"
        if self._accepting:
            for function in self._queue.counts():
                assert not self._pool.has_free(function), f"{function} waits beside a free slot"
        self._check_adoption()

    def _check_adoption(self) -> None:
        for task_id, early in self._early.items():
            assert early.timer and early.claim.task_id == task_id, f"early claim {task_id}"
            task = self._tasks.get(task_id)
            assert task is None or task.state is WAITING_DEPS, f"{task_id} came, still early"
        if self._hold is None:
            assert not self._tasks.unclaimed, "tasks wait for a restart hold that ended"


_UNKNOWN: Failure = (-1, ErrorInfo("", ""))  # a dependency the broker does not know


def _as_sent(inputs: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A RUN's inputs: the ids its placeholders name, as the submitter sent them."""
    if inputs is not None and any(SEPARATOR in ref for ref in inputs):
        return tuple(map(plain, inputs))
    return inputs


def _failed_dependency(
    dep: str, exit_code: int, function: str | None = None, error: ErrorInfo | None = None
) -> Failure:
    """The answer of a task whose dependency `dep` (running `function`) ended with
    `exit_code` (not 0) and `error`: the dependent's error names the dependency and says
    why it failed, down to the first task of a chain that failed."""
    name = plain(dep) if function is None else f"{plain(dep)} ({function})"
    if exit_code == EXIT_CANCELLED:
        return (EXIT_CANCELLED, ErrorInfo("Cancelled", f"its dependency {name} was cancelled"))
    if error is not None and error.type == "DependencyFailed":
        why = _clip(error.message)
        text = f"its dependency {name} did not run either; {why}"
    else:
        why = "" if error is None else f": {error.type}: {_clip(error.message)}"
        text = f"its dependency {name} failed (exit {exit_code}{why}); it did not run"
    return (EXIT_DEPENDENCY_FAILED, ErrorInfo("DependencyFailed", text))


def _clip(text: str, limit: int = 400) -> str:
    """`text`, cut to `limit` characters: a long chain's messages do not grow without end."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unknown_task(task_id: str, what: str) -> str:
    return (
        f"cannot {what} task {task_id!r}: the broker has no such task of this client (never "
        "submitted with this CURVE key or client id, or answered longer ago than it keeps "
        "answers, zbroker start --keep-results)"
    )


def _no_node(function: str) -> str:
    return (
        f"no registered node offers function {function!r}; start a node that provides it "
        f"(znode --functions SET) or check the name with `zbroker status`"
    )
