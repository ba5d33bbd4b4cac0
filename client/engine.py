"""The I/O thread behind `Client.submit`: one DEALER socket to the broker for every future
of a Client, owned by one thread (a ZeroMQ socket belongs to one thread).

Other threads hand it work through a queue and wake it through a pipe it polls along with
the socket; it sends new EXECUTEs in batches (up to 64 tasks per message, protocol.md 2.4),
settles futures from the answers by task id, and resends what is unanswered when the broker
is silent, or at once when the socket's connection was lost and made again (a broker
restarted; client/link.py Reconnects). client/ledger.py keeps that book.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import InvalidStateError
from dataclasses import dataclass
from typing import Any

import zmq

from broker.protocol import (
    Cancel,
    Execute,
    TaskSpec,
    batches,
    encode,
    encode_tasks,
)
from broker.protocol.frames import NOBLOCK, POLLIN, poll, readable, recv_frames, send_frames
from broker.tracing import ClientSpans
from client.errors import ClientError
from client.futures import TaskFuture
from client.ledger import Ledger, Outgoing, Settled
from client.link import CLOSED, ConnectWatch, Contact, Reconnects, poll_ms
from client.payloads import dealer_reply, refuses_packing
from client.pipeline import EXECUTE_BATCH_TASKS

_log = logging.getLogger(__name__)

SEND_QUEUE = 10_000  # messages the socket queues for the broker before a send would block
CLOSED_PENDING = (
    "the client was closed before the broker answered; the task may still run: "
    "Client.result(task_id) on another client gets its answer"
)


@dataclass(frozen=True, slots=True)
class SubmitTask:
    spec: TaskSpec
    future: TaskFuture


@dataclass(frozen=True, slots=True)
class CancelTask:
    task_id: str
    future: TaskFuture


class StopEngine:
    pass


Command = SubmitTask | CancelTask | StopEngine


class Engine:
    """The thread that owns the futures' socket; started by the constructor.

    `submit`, `cancel` and `stop` may be called from any thread. Futures are settled (and
    their done-callbacks run) in this thread: a callback that blocks holds up every other
    answer of the Client.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        contact: Contact,
        resend_interval: float,
        spans: ClientSpans | None = None,
    ) -> None:
        self.url = contact.url
        self._context = context
        self._contact = contact
        # Made here, in the caller's thread, so a bad URL fails the first submit; the thread
        # start hands it over (ZeroMQ allows that with a memory barrier).
        self._sock, self._watch, self._reconnects = self._open()
        # While the broker has not been reached: when the oldest future still waiting was
        # submitted (BrokerUnreachable for them all a connect timeout later).
        self._unreached_since: float | None = None
        # EXECUTEs packed (protocol.md 2.5) until the broker refuses it (`Contact.packs`).
        self._packed = contact.packs
        self._wake_in, self._wake_out = os.pipe()
        os.set_blocking(self._wake_in, False)
        os.set_blocking(self._wake_out, False)
        self._ledger: Ledger[TaskFuture] = Ledger(
            resend_interval, spans=spans, client=contact.client_id
        )
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        # Guards `_stopping`, `_wake_pending` and the pipe's write end.
        self._lock = threading.Lock()
        self._stopping = False
        self._wake_pending = False
        self._ended = False  # the thread has closed its socket
        self._after_end: list[Callable[[], None]] = []
        name = f"ztb-client {self.url}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    def submit(self, spec: TaskSpec, future: TaskFuture) -> None:
        """Send task `spec`; `future` gets its answer. ClientError once stopped."""
        if not self._post(SubmitTask(spec, future)):
            raise ClientError(CLOSED)

    def cancel(self, future: TaskFuture, task_id: str) -> None:
        """`future` (cancelled by its caller) waits no more; cancel its task at the broker.
        Nothing once stopped: then no future waits anyway."""
        self._post(CancelTask(task_id, future))

    def stop(self, timeout: float) -> bool:
        """Stop the thread; the futures still waiting fail with ClientError. Whether it
        ended within `timeout` seconds (it does unless a done-callback blocks it)."""
        self._post(StopEngine())
        if threading.current_thread() is self._thread:  # close() from a done-callback
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def when_ended(self, action: Callable[[], None]) -> None:
        """Call `action` once the thread has closed its socket: now if it has, else from
        the thread as its last step (for a stop that could not wait for it)."""
        with self._lock:
            if not self._ended:
                self._after_end.append(action)
                return
        action()

    def _post(self, command: Command) -> bool:
        with self._lock:
            if self._stopping:
                return False
            if isinstance(command, StopEngine):
                self._stopping = True
            self._commands.put(command)
            if not self._wake_pending:  # one byte in the pipe wakes the thread for all
                self._wake_pending = True
                os.write(self._wake_out, b"!")
        return True

    # ------------------------------------------------------------------ the I/O thread

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            _log.exception("the client's I/O thread failed")
            reason = f"the client's I/O thread failed ({exc!r})"
            self._settle(self._ledger.fail_all(reason))
        finally:
            self._end()

    def _open(self) -> tuple[zmq.Socket[Any], ConnectWatch | None, Reconnects | None]:
        sock, watch, reconnects = self._contact.open_watched(self._context, zmq.DEALER)
        # Answers are bounded by what was sent: never let the socket drop one.
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
        return sock, watch, reconnects

    def _serve(self) -> None:
        ledger = self._ledger
        items: list[tuple[Any, int]] = []
        monitor: zmq.Socket[Any] | None = None
        polled: tuple[object, ...] = ()
        while True:
            sock = self._sock
            if (sock, self._watch, self._reconnects) != polled:  # made anew on a change
                polled = (sock, self._watch, self._reconnects)
                items, monitor = self._poll_items()
            resend = ledger.resend_due()
            due = min(math.inf if resend is None else resend, self._give_up())
            ready = poll(items, -1 if due == math.inf else poll_ms(due - time.monotonic()))
            self._take_events(bool(ready) and ready[-1][0] is monitor)
            if not self._take_commands():
                self._settle(ledger.fail_all(CLOSED_PENDING))
                return
            self._send(ledger.outgoing())
            while readable(sock):
                self._receive(recv_frames(sock, NOBLOCK))
            now = time.monotonic()
            if now >= self._give_up():
                self._unreachable(now)
            else:
                self._send(ledger.resends(now))

    def _poll_items(self) -> tuple[list[tuple[Any, int]], zmq.Socket[Any] | None]:
        """What the thread polls: its socket, its wake-up pipe and, last, the socket's one
        monitor (returned too). Monitor events are rare: polled with the rest, the monitor
        costs one more item per poll and no wake-up, and a reconnection is seen at once."""
        items: list[tuple[Any, int]] = [(self._sock, POLLIN), (self._wake_in, POLLIN)]
        monitor = None
        if self._watch is not None:
            monitor = self._watch.monitor
        elif self._reconnects is not None:
            monitor = self._reconnects.monitor
        if monitor is not None:
            items.append((monitor, POLLIN))
        return items, monitor

    def _take_events(self, monitor_ready: bool) -> None:
        """The monitor's news: the broker reached (the ConnectWatch hands over to its
        Reconnects), or the connection made again after it was lost (everything in flight
        is sent again at once: a restarted broker knows only what is sent again)."""
        watch, reconnects = self._watch, self._reconnects
        if watch is not None:
            watch.take_events()
            if not watch.closed:
                return
            self._watch, self._unreached_since = None, None
            self._reconnects = reconnects = watch.kept
            monitor_ready = True  # the watch may have handed it events
        if monitor_ready and reconnects is not None and reconnects.reconnected():
            _log.info("the connection to %s was made again: resending at once", self.url)
            self._send(self._ledger.resend_all(time.monotonic()))

    def _give_up(self) -> float:
        """When the futures waiting fail for want of a connection (inf once reached)."""
        since = self._unreached_since
        timeout = self._contact.connect_timeout
        if since is None or timeout is None or self._watch is None:
            return math.inf
        return since + timeout

    def _unreachable(self, now: float) -> None:
        """No connection within the connect timeout: every future waiting fails with
        BrokerUnreachable, and a new socket drops what the old one queued (so that no task
        of theirs reaches a broker that comes up later)."""
        assert self._watch is not None and self._contact.connect_timeout is not None
        error = self._watch.unreachable(self._contact.connect_timeout)
        self._watch.close()
        self._sock.close(linger=0)
        self._sock, self._watch, self._reconnects = self._open()
        self._unreached_since = None
        self._settle(self._ledger.fail_all(error))

    def _take_commands(self) -> bool:
        """Carry out the commands posted; False once told to stop."""
        with self._lock:
            if self._wake_pending:
                self._wake_pending = False
                _drain(self._wake_in)
        ledger = self._ledger
        now = time.monotonic()
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if type(command) is SubmitTask:
                if self._watch is not None and self._unreached_since is None:
                    self._unreached_since = now
                self._settle(ledger.submitted(command.future, command.spec, now))
            elif type(command) is CancelTask:
                ledger.cancelled(command.future, command.task_id)
            else:
                return False

    def _receive(self, frames: list[bytes]) -> None:
        message = dealer_reply(frames, self.url)
        if message is None:
            return
        if self._packed and refuses_packing(message, self.url):
            # Everything unanswered goes again, in pairs from now on.
            self._packed = self._contact.packs = False
            self._send(self._ledger.resend_all(time.monotonic()))
            return
        self._settle(self._ledger.answered(message, time.monotonic()))

    def _send(self, messages: list[Outgoing]) -> None:
        """Consecutive EXECUTEs in batches (packed until the broker refuses it), each CANCEL
        alone (it cannot be batched). A full send queue leaves the rest to the next resend."""
        for frames in outgoing_frames(messages, self._packed):
            try:
                send_frames(self._sock, frames, NOBLOCK)
            except zmq.Again:
                _log.warning("the send queue to %s is full; the rest waits to be resent", self.url)
                return

    @staticmethod
    def _settle(settled: list[Settled[TaskFuture]]) -> None:
        for one in settled:
            try:
                if one.error is None:
                    one.future.set_result(one.value)
                else:
                    one.future.set_exception(one.error)
            except InvalidStateError:  # cancelled by its caller in the meantime
                pass

    def _end(self) -> None:
        with self._lock:
            self._stopping = True  # nothing is posted from now on
            os.close(self._wake_out)
        os.close(self._wake_in)
        if self._watch is not None:
            self._watch.close()
        if self._reconnects is not None:
            self._reconnects.close()
        self._sock.close(linger=0)
        # Submissions the thread never took (it failed first) must not wait for ever.
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if type(command) is SubmitTask:
                error = ClientError(f"task {command.spec.task_id}: {CLOSED_PENDING}")
                self._settle([Settled(command.future, error=error)])
        with self._lock:
            self._ended = True
            after_end, self._after_end = self._after_end, []
        for action in after_end:
            action()


def outgoing_frames(outgoing: list[Outgoing], packed: bool = False) -> Iterator[list[bytes]]:
    """The messages for `outgoing`, in order: consecutive EXECUTEs batched (`packed`: in
    the packed form, protocol.md 2.5), CANCELs alone."""
    executes: list[Execute] = []
    for message in outgoing:
        if type(message) is Execute:
            executes.append(message)
            continue
        yield from _execute_batches(executes, packed)
        executes = []
        assert type(message) is Cancel  # what the ledger makes: EXECUTE or CANCEL
        yield [b"", *encode(message)]
    yield from _execute_batches(executes, packed)


def _execute_batches(executes: list[Execute], packed: bool) -> Iterator[list[bytes]]:
    for batch in batches(executes, lambda execute: len(execute.spec.args), EXECUTE_BATCH_TASKS):
        yield [b"", *encode_tasks(batch, packed)]


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
