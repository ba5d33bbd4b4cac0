"""The node agent: registers with the broker, hands RUN to its slots and RESULT back.

One thread owns everything socket-side: the DEALER to the broker (through the link) and a
wake-up socket pair for signals and finished slot-thread tasks, polled together, so a
signal, a result or a silent broker is handled as soon as it happens. The agent holds its
parts and wires them together: the link (node/link.py), the slots (node/slots/), the
lifecycle (node/lifecycle.py) and what a task it cannot stop costs (node/restarts.py). It
never decodes arguments or results.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import time
from collections import deque
from types import FrameType

import zmq

from broker import tracing
from broker.protocol import (
    ERR_MALFORMED,
    ERR_NOT_HOLDER,
    ERR_NOT_REGISTERED,
    RESULTS_HELD_BACK,
    STALL_MIN,
    Batch,
    Claim,
    Disconnect,
    Error,
    Heartbeat,
    Register,
    Registered,
    RemoteProtocolError,
    Retract,
    Retracted,
    Run,
    Stop,
    Stored,
    Waiting,
    decode,
    encode,
)
from broker.protocol.frames import NOBLOCK, POLLIN, TimedReceiver, poll, readable, recv_frames
from broker.security import KeyFileError, peer_keys
from node import context, registry, supervision
from node.config import NodeConfig
from node.lifecycle import STOP_BYTES, Lifecycle, install_stop_signals, stop_signalled
from node.link import BrokerLink
from node.restarts import Restarts, overdue_reason, overdue_result
from node.slots import SlotHooks, open_slots
from node.slots.threads import combine_results

log = logging.getLogger(__name__)

DRAIN_BATCH = 256  # messages read per socket before the others get a turn
STOP_CHECK_MS = 100  # the longest wait inside a receive: a stop signal is seen within it
# Results of tasks run inline leave together: at most FLUSH_AFTER after the first of them
# while more tasks run, and by FLUSH_BY (the inline watchdog sends them) should one run long;
# never more than RESULTS_HELD_BACK when the next starts (the broker's count of which held
# tasks may have started relies on it: protocol.md 5.5).
FLUSH_AFTER = 0.0002
FLUSH_BY = 0.002
# Between tasks run inline, the broker's socket is looked at (is a message waiting?) at most
# every LOOK_EVERY seconds: a look is a getsockopt that polls libzmq's mailbox (1.5 us in
# `tools/bench.py frames`), about as much as a short task's own run; a RETRACT or a RUN waits
# for it at most this long more.
LOOK_EVERY = 0.0002
PROBE_INTERVAL = 0.05  # seconds between HEARTBEATs asking a broker whether it forgot us
RESULTS_READY = b"\xff"  # on the wake-up socket: slot threads finished tasks
IDLE_WAIT_MS = 1000  # the longest poll when nothing is due


class NodeAgent:
    """The node's main loop. `run()` blocks until the node stops and gives its exit code."""

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        functions = registry.resolve(config.function_sets)
        self._functions = tuple(sorted(functions))
        try:
            keys = peer_keys(config.curve, config.broker_key)
        except KeyFileError as exc:
            raise registry.NodeSetupError(str(exc)) from None
        self._link = BrokerLink(config.broker_url, config.heartbeat_interval, config.liveness, keys)
        self._life = Lifecycle()
        hooks = SlotHooks(
            results_ready=self._results_ready,
            keep_alive=self._keep_alive,
            next_heartbeat=self._link.next_heartbeat,
            overdue=self._on_overdue_inline,
        )
        self._slots = open_slots(functions, config.threads, hooks)
        self._restarts = Restarts(
            self._link, self._life, self._slots, config.report_fd, node=config.name
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._wake = (self._wake_fd, POLLIN)
        self._replaces = config.replaces  # sent until the broker has answered a REGISTER
        # The answers of the process this one replaces: claimed and sent as this one's own.
        self._link.unsent = [list(frames) for frames in config.handover]
        if config.handover:
            log.info(
                "sending %d answer(s) of the process this one replaces once registered",
                len(config.handover),
            )
        # Registered once already: a later REGISTER claims what this process still has.
        self._registered_before = False
        # RESULTs of tasks run inline, not sent yet (see FLUSH_AFTER), and when the first came.
        self._pending: list[list[bytes]] = []
        self._pending_since = 0.0
        self._demand = supervision.DemandReport(config.demand_fd)  # for an elastic supervisor
        # A clean stop waits until the broker has forgotten this process (see `_may_end`).
        self._forgotten = False
        self._probe_at = math.inf  # when to ask again
        self._probe_until = math.inf  # when to stop asking: the broker is gone
        self._receiver: TimedReceiver | None = None  # waits on the broker socket (`_receive`)
        # Tasks that wait for other tasks, or go on (node.context): (task id, waiting), from
        # the tasks' threads, for the thread that holds the socket (`_lend_slots`).
        self._lending: deque[tuple[str, bool]] = deque()
        context.configure(config.broker_url, self._lend, config.curve, config.broker_key)
        self._exit_code: int | None = None
        self.malformed = 0  # messages from the broker that could not be decoded

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until stopped; 0 after a clean stop, 130 after a second stop request."""
        restore = install_stop_signals(self._wake_w.fileno(), self._note_stop)
        try:
            self._slots.start()
            log.info(
                "node %s: %d slots ready for %d functions (%s); broker %s",
                self._config.name,
                self._slots.capacity,
                len(self._functions),
                ", ".join(self._config.function_sets),
                self._config.broker_url,
            )
            self._connect()
            while self._exit_code is None:
                self._step()
            return self._exit_code
        finally:
            restore()
            self._close()

    def request_stop(self) -> None:
        """Stop like SIGTERM does (safe from any thread); a second call stops at once."""
        self._note_stop(signal.SIGTERM, None)
        with contextlib.suppress(OSError):  # closed: the agent has stopped already
            self._wake_w.send(b"\0")

    def _note_stop(self, signum: int, frame: FrameType | None) -> None:
        """The wakeup fd brings the stop to the loop; a function running inline delays the
        loop, so the slots are poked too (the inline watchdog deregisters at once)."""
        self._life.asked = True
        self._slots.poke()

    def _close(self) -> None:
        at_once = self._exit_code == 130
        if self._link.socket is not None:
            self._flush_pending()
        self._slots.close(wait=0.0 if at_once else 1.0)
        # Waits (at most the linger) for the last RESULTs and DEREGISTER to leave. Slot
        # threads own no socket, so one still inside a function does not hold it up.
        self._link.close(clean=not at_once)
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        sock = self._link.socket
        wait_ms = 0 if self._slots.runnable else self._poll_wait_ms()
        if sock is not None and not self._slots.notifies:
            self._receive(sock, wait_ms)
        else:
            # The wake-up socket first: finished slot-thread results leave before more RUNs
            # are taken in.
            waited_on = [self._wake] if sock is None else [self._wake, (sock, POLLIN)]
            started = time.monotonic()
            ready = poll(waited_on, wait_ms)
            self._check_wait(started, wait_ms)
            for item, _ in ready:
                if item is sock and sock is not None:
                    self._drain_broker(sock)
                elif item == self._wake_fd:
                    self._on_wakeup()
        if self._slots.runnable:
            self._run_held()
        now = time.monotonic()
        if self._slots.next_deadline <= now:
            self._restarts.expire(now)
        self._tick(now)

    def _check_wait(self, started: float, wait_ms: int) -> None:
        """A wait for the broker that ended STALL_MIN or more after it should have: the
        process was held up (stopped, a GC pause, a busy host), and could not read."""
        now = time.monotonic()
        stall = now - started - wait_ms / 1000
        if stall >= STALL_MIN:
            self._stalled(stall, now)

    def _stalled(self, stall: float, now: float) -> None:
        log.warning(
            "this node's loop was held up for %.2f s (the process was stopped or paused, or "
            "the host was busy); the broker's silence over it is not counted",
            stall,
        )
        self._link.excuse(stall, now)

    def _receive(self, sock: zmq.Socket[bytes], wait_ms: int) -> None:
        """Wait for the broker inside the receive, as the broker waits for its peers: less
        work per message than a poll of the socket and the wake-up socket, which only the
        slots that notify (slot threads) need. A stop signal is then seen when the wait
        ends, at most STOP_CHECK_MS later."""
        receiver = self._receiver
        if receiver is None or receiver.sock is not sock:
            receiver = self._receiver = TimedReceiver(sock)
        wait_ms = min(wait_ms, STOP_CHECK_MS)
        started = time.monotonic()
        frames = receiver.recv(wait_ms)
        self._check_wait(started, wait_ms)
        if frames is not None:
            self._drain_broker(sock, frames)
        if self._life.asked:  # a signal or request_stop(): its byte waits on the wake-up socket
            self._on_wakeup()

    def _poll_wait_ms(self) -> int:
        life = self._life
        due = min(self._link.due(life.stopping), self._slots.next_deadline, life.restart_by)
        due = min(due, self._demand.due, self._probe_at)
        if due == math.inf:
            return IDLE_WAIT_MS
        return max(0, int((due - time.monotonic()) * 1000) + 1)

    def _tick(self, now: float) -> None:
        parent = self._config.parent_pid
        link = self._link
        self._demand.update(link.registered, link.backlog, self._slots.busy, link.results, now)
        if parent is not None and os.getppid() != parent:
            log.error("supervisor %d is gone; stopping at once", parent)
            self._exit_code = 1
        elif self._life.stopping and self._life.drained(self._slots.busy, now):
            if self._may_end(now):
                self._finish()
        else:
            self._upkeep(now)

    def _upkeep(self, now: float) -> None:
        """Keep the link registered: connect, register again, heartbeat, send what waits."""
        link = self._link
        if link.socket is None:
            if not self._life.stopping and now >= link.connect_at:
                self._connect()
        elif link.reconnected(now):
            why = f"the connection to the broker at {link.url} was lost and made again"
            self._reconnect(why, at_once=True)
        elif not link.registered:
            if now >= link.register_deadline:
                link.retry()
        elif link.broker_dead(now):
            silent = now - link.last_heard
            self._reconnect(f"broker at {link.url} silent for {silent:.1f} s")
        elif link.unsent:
            link.flush()
        else:
            link.heartbeat_if_due(now)

    def _may_end(self, now: float) -> bool:
        """Whether a stopping process with nothing left may end. After DEREGISTER, a RUN the
        broker sent before it arrived may still be on its way: the process stays until the
        broker has forgotten it, which its DISCONNECT in answer to a HEARTBEAT says
        (protocol.md 7.2), running what comes meanwhile. A broker silent for the expiry is
        not waited for; a process restarting for an overdue task does not wait."""
        link = self._link
        if self._forgotten or link.socket is None or not link.deregistered:
            return True
        if self._life.restarting:
            return True
        if self._probe_until == math.inf:
            self._probe_until = now + link.expiry
        if now >= self._probe_until:
            return True
        if now >= self._probe_at or self._probe_at == math.inf:
            link.send(encode(Heartbeat()))
            self._probe_at = now + PROBE_INTERVAL
        return False

    def _finish(self) -> None:
        if self._link.unsent:
            log.warning(
                "stopping with %d result(s) the broker never got; it will run those tasks again",
                len(self._link.unsent),
            )
        self._restarts.exit_if_restarting()
        log.info("node %s stopped", self._config.name)
        self._exit_code = 0

    def _connect(self) -> None:
        config, host = self._config, socket.gethostname()
        # Sent on every REGISTER, even empty: the broker then confirms stored RESULTs from
        # the first (STORED), so an answer it had not stored when killed comes again.
        claims: tuple[Claim, ...] = ()
        if self._registered_before:  # what this process still has (protocol.md 7.3)
            self._flush_pending()  # (kept by the link until registered)
            self._send_results(self._slots.take_results())
            slots = self._slots
            running = [Claim(run.task_id, run.attempt) for run in slots.started()]
            running += [Claim(run.task_id, run.attempt, held=True) for run in slots.held_runs()]
            claims = self._link.claims(running)
        elif self._link.unsent:  # the answers handed over by the process this one replaces
            claims = self._link.claims([])
        register = Register(
            config.name,
            host,
            os.getpid(),
            self._functions,
            self._slots.capacity,
            self._replaces,
            config.prefetch,
            stop=True,  # it answers STOP (`_on_stop`)
            attempts=claims,
            adopts_interval=True,  # BrokerLink.on_heartbeat
            packed=True,  # `decode` reads the packed form
        )
        if claims:
            log.info("registering again with %d attempts this process still has", len(claims))
        self._link.connect(register)

    # ------------------------------------------------------------------ from the broker

    def _drain_broker(self, sock: zmq.Socket[bytes], first: list[bytes] | None = None) -> None:
        """Handle the messages waiting on the broker socket (at most DRAIN_BATCH), `first`
        (received already) first."""
        for _ in range(DRAIN_BATCH):
            if first is not None:
                frames, first = first, None
            else:
                try:
                    frames = recv_frames(sock, NOBLOCK)
                except zmq.Again:
                    return
            # Any message is a sign of life; stamped per message, since a RUN run inline
            # may take long while more messages wait behind it.
            self._link.last_heard = time.monotonic()
            try:
                if frames[0]:
                    raise RemoteProtocolError(ERR_MALFORMED, "missing the empty delimiter frame")
                msg = decode(frames[1:])
            except RemoteProtocolError as exc:
                self._on_malformed(exc)
                continue
            if type(msg) is Run:
                self._slots.submit(msg)
            elif type(msg) is Batch:
                self._on_runs(msg)
            elif type(msg) is Retract:
                self._on_retract(msg)
            else:
                self._on_control(msg)
            if self._link.socket is not sock or not readable(sock):
                return  # done, or the message made us drop this socket

    def _on_malformed(self, exc: Exception) -> None:
        self.malformed += 1
        log.warning(
            "ignoring a malformed message from the broker (%d so far): %s", self.malformed, exc
        )

    def _on_control(self, msg: object) -> None:
        link = self._link
        if isinstance(msg, Registered):
            self._on_registered(msg)
        elif isinstance(msg, Disconnect):
            if self._life.stopping and link.deregistered:
                self._forgotten = True  # what a stopping process waits for (`_may_end`)
                return
            reason = msg.reason or "no reason given"
            self._reconnect(f"broker at {link.url} disconnected us ({reason})")
        elif isinstance(msg, Error):
            self._on_error(msg)
        elif isinstance(msg, Heartbeat):
            link.on_heartbeat(msg)
        elif isinstance(msg, Stop):
            self._on_stop(msg)
        elif isinstance(msg, Stored):
            link.on_stored(msg.results)
        else:
            self._on_malformed(ValueError(f"unexpected {type(msg).__name__} for a node"))

    def _on_error(self, msg: Error) -> None:
        if msg.code == ERR_NOT_REGISTERED:
            self._reconnect(f"broker at {self._link.url} does not know us")
        elif msg.code == ERR_NOT_HOLDER:
            # This process does not hold that attempt (any more): the broker ignored the
            # RESULT and the task goes on elsewhere; nothing here needs mending.
            log.warning(
                "broker refused the result of task %s: %s",
                msg.task_id,
                msg.message,
                extra={"task_id": msg.task_id, "node": self._config.name},
            )
        else:
            log.warning("broker reported error %s: %s", msg.code, msg.message)

    def _on_registered(self, msg: Registered) -> None:
        self._link.on_registered(msg)
        self._replaces = None  # the broker knows now; a later REGISTER is not a restart
        if self._registered_before and not msg.adopts:
            # A broker that does not take claims places the held tasks again itself.
            dropped = self._slots.drop_held()
            if dropped:
                log.warning(
                    "dropping %d task(s) held unstarted: the broker places them again", dropped
                )
        self._registered_before = True
        self._link.flush()

    def _reconnect(self, why: str, at_once: bool = False) -> None:
        """Register again on a fresh socket. The tasks held unstarted are kept and claimed
        with those running (protocol.md 7.3); a broker that does not take claims places
        them again, and they are dropped then (`_on_registered`)."""
        self._link.reconnect(why, at_once)

    def _on_runs(self, batch: Batch) -> None:
        for item in batch.items:
            if type(item) is Run:
                self._slots.submit(item)
            else:
                self._on_malformed(ValueError(f"a batch from the broker holds {item!r}"))

    def _on_retract(self, msg: Retract) -> None:
        """Give back what has not started; a RESULT finished before goes first."""
        returned, started = self._slots.retract(msg.task_ids)
        self._flush_pending()
        self._link.send_in_order(encode(Retracted(tuple(returned), tuple(started))))

    def _on_stop(self, msg: Stop) -> None:
        """STOP: tasks of ours were cancelled. Each held one is dropped and each running one
        stopped (by restarting the process), all answered exit 130 at once; a task finished
        already is answered with its result, which goes first."""
        self._flush_pending()
        self._send_results(self._slots.take_results())
        self._restarts.cancel(self._slots.cancel(msg.task_ids), time.monotonic())

    def _run_held(self) -> None:
        """Run held tasks inline, oldest first, until none is left or a message waits (looked
        at every LOOK_EVERY); their results leave together (FLUSH_AFTER, FLUSH_BY), at most
        RESULTS_HELD_BACK of them unsent when the next one starts."""
        slots, link, pending = self._slots, self._link, self._pending
        look_at = 0.0  # the first task's end is looked at: a long task's always is
        while True:
            if pending and (
                len(pending) >= RESULTS_HELD_BACK
                or time.monotonic() - self._pending_since >= FLUSH_AFTER
            ):
                self._flush_pending()
            frames = slots.run_next(self._pending_since + FLUSH_BY if pending else math.inf)
            if self._lending:  # the task's last WAITING goes before its RESULT
                self._lend_slots()
            if not pending:  # (the watchdog may have sent them meanwhile)
                self._pending_since = time.monotonic()
            pending.append(frames)
            if not slots.runnable:
                self._flush_pending()
                return
            sock = link.socket
            if sock is None or self._life.asked:
                return
            now = time.monotonic()
            if now >= look_at:
                if readable(sock):
                    return
                look_at = now + LOOK_EVERY

    def _flush_pending(self) -> None:
        pending = self._pending
        if len(pending) == 1:  # the common case of a task alone, without combining
            self._link.send_in_order(pending.pop())
        elif pending:
            self._send_results(pending)
            pending.clear()

    def _send_results(self, results: list[list[bytes]]) -> None:
        """Send RESULTs, several to a message (packed for a broker that takes it)."""
        link = self._link
        for message in combine_results(results, link.packed):
            link.send_in_order(message)

    # ------------------------------------------------------------------ from the slots

    def _results_ready(self) -> None:
        """Called by a slot thread: wake the socket thread (once per batch of results)."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: done
            self._wake_w.send(RESULTS_READY)

    def _lend(self, task_id: str, waiting: bool) -> None:
        """From a task's thread: the task waits for other tasks (or goes on). The thread
        that holds the socket lends its slot and tells the broker (`_lend_slots`): the
        socket thread, woken, or the inline watchdog, poked (the socket thread may be
        inside that very task)."""
        self._lending.append((task_id, waiting))
        self._results_ready()
        self._slots.poke()

    def _lend_slots(self) -> None:
        """Holding the socket: lend or take back the slots of waiting tasks, and say WAITING
        (protocol.md 3.21)."""
        lending, slots, link = self._lending, self._slots, self._link
        while lending:
            task_id, waiting = lending.popleft()
            changed = slots.lend(task_id) if waiting else slots.reclaim(task_id)
            if changed and link.registered:
                link.send_in_order(encode(Waiting(task_id, waiting)))

    def _keep_alive(self) -> None:
        """Called by the inline watchdog, holding the socket, while a function runs: send
        the results that wait, read the broker (a RETRACT is answered at once), and
        heartbeat or deregister as the loop would."""
        link = self._link
        if link.socket is None or not link.registered:
            if not self._life.stopping:  # register again while the function runs
                self._upkeep(time.monotonic())
                if link.socket is not None and readable(link.socket):
                    self._drain_broker(link.socket)  # REGISTERED, and what follows it
            return
        if link.reconnected(time.monotonic()):
            why = f"the connection to the broker at {link.url} was lost and made again"
            self._reconnect(why, at_once=True)
            return
        if self._lending:
            self._lend_slots()
        self._flush_pending()
        self._send_results(self._slots.take_results())  # of tasks run in lent slots
        if readable(link.socket):
            self._drain_broker(link.socket)
        if link.socket is None or not link.registered:
            return
        if not self._deregister_if_asked():
            now = time.monotonic()
            link.heartbeat_if_due(now)
            # The socket thread is inside a function: say that this process is busy.
            self._demand.update(link.registered, link.backlog, self._slots.busy, link.results, now)

    def _deregister_if_asked(self) -> bool:
        """For the inline watchdog: DEREGISTER if a stop was asked (once); whether it was.
        A stop signal taken by a thread other than the main one is seen on the wake-up
        socket (its handler waits for the main thread to leave the function)."""
        life = self._life
        if not life.asked and stop_signalled(self._wake_r):
            life.asked = True
        if not life.asked or self._link.deregistered:
            return False
        self._link.deregister()
        return True

    def _on_overdue_inline(self, run: Run) -> None:
        """Called by the inline watchdog, holding the socket, at the deadline of the task
        whose function the socket thread is in: answer for it and end the process."""
        self._flush_pending()
        self._restarts.end_now([overdue_result(run)], overdue_reason(run), run.task_id)

    # ------------------------------------------------------------------ stopping

    def _on_wakeup(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for byte in data:
            if byte in STOP_BYTES:
                self._on_stop_request()
        if self._lending:
            self._lend_slots()
        if RESULTS_READY[0] in data:
            self._send_results(self._slots.take_results())

    def _on_stop_request(self) -> None:
        if self._life.stop_requested():
            log.warning("second stop request: exiting now without waiting for running tasks")
            self._exit_code = 130
            return
        log.info("stopping: no new tasks; waiting for %d running task(s)", self._slots.busy)
        if not self._link.registered:
            self._link.drop(0.0)
        else:
            self._link.deregister()


def serve(config: NodeConfig) -> int:
    """Run a node until it is stopped; its exit code. Raises NodeSetupError if it cannot start.
    Its tasks are traced as the OTEL_* environment says (off unless it asks)."""
    tracing.configure("znode", **{"ztb.node": config.name})
    return NodeAgent(config).run()
