"""The pipelined client: many tasks in flight on one DEALER socket, results in input order.
`Client.map` / `Client.imap` use this."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import zmq

from broker.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Batch,
    Error,
    Execute,
    TaskCompleted,
    batches,
    encode_tasks,
)
from broker.protocol.frames import NOBLOCK, recv_frames, send_frames, wait_readable
from broker.tracing import ClientSpans
from client.errors import ClientError, MessageTooLarge, broker_error
from client.link import LOOK_INTERVAL, LOOK_MS, ConnectWatch, Contact, Reconnects, poll_ms
from client.options import TaskOptions, check_name, check_task_size
from client.payloads import dealer_reply, encode_arguments, refuses_packing, result_of

_log = logging.getLogger(__name__)


class Pipeline:
    """One map over a DEALER socket: up to `window` tasks in flight, results in input order.

    Resend rule: when no reply at all arrives for `resend_interval`, or as soon as the
    socket's connection was lost and made again (a broker restarted, which knows only what
    is sent again: client/link.py Reconnects, looked at every LOOK_INTERVAL at most), every
    outstanding task is sent again with its own task id (the broker answers a pending task
    instead of running it again, and answers nobody twice for one EXECUTE). `timeout`
    counts from the last reply of any kind; None waits forever. `contact`: the client's
    (until it first reached the broker, the socket is watched: BrokerUnreachable after its
    connect timeout).
    A task whose EXECUTE is over `max_message_size` is not sent: its outcome is
    MessageTooLarge. `answers`: yield each TASK_COMPLETED as it came instead of its result.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        url: str,
        function: str,
        arguments: Iterable[Sequence[Any]],
        *,
        window: int,
        options: TaskOptions,
        timeout: float | None,
        resend_interval: float,
        return_exceptions: bool,
        contact: Contact | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        answers: bool = False,
        prefix: str | None = None,
        parent: str | None = None,
        spans: ClientSpans | None = None,
    ) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self._context = context
        self._spans = spans  # the tasks' submit spans, when the client traces
        self._url = url
        self._function = check_name("function", function)
        self._options = options
        self._inputs = enumerate(arguments)
        self._window = window
        self._timeout = timeout
        self._resend_interval = resend_interval
        self._return_exceptions = return_exceptions
        self._contact = Contact(url, None) if contact is None else contact
        self._watch: ConnectWatch | None = None  # until the broker is reached
        self._reconnects: Reconnects | None = None  # once it is
        self._next_look = 0.0  # when `_look` is due
        self._max_size = max_message_size
        self._answers = answers
        # Task ids: PREFIX.INDEX; a task's client gives a prefix derived from its task's,
        # and its task as the parent of every task (protocol.md 5.9).
        self._prefix = uuid.uuid4().hex if prefix is None else prefix
        self._parent = parent
        self._exhausted = False
        # Several tasks to an EXECUTE go packed (protocol.md 2.5) until the broker refuses
        # a packed message whole, as one before document 1.17 does; then in pairs, again,
        # and so do the client's later maps (`Contact.packs`).
        self._packed = self._contact.packs
        self._unpacked = False  # just refused: every task goes again, in pairs
        # task_id -> (input position, the EXECUTE as sent), kept for resends.
        self._outstanding: dict[str, tuple[int, Execute]] = {}
        self._done: dict[int, Any] = {}
        self._last_reply = self._quiet_since = time.monotonic()
        self._give_up = self._contact.connect_deadline(self._last_reply)

    def run(self) -> Iterator[Any]:
        """Yield each task's result (or failure) in input order."""
        sock, self._watch, self._reconnects = self._contact.open_watched(self._context, zmq.DEALER)
        # Replies are bounded by what was sent, so never let the socket drop one.
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, max(1000, 2 * self._window))
        try:
            yield from self._loop(sock)
        finally:
            if self._watch is not None:
                self._watch.close()
            if self._reconnects is not None:
                self._reconnects.close()
            sock.close()

    def _loop(self, sock: zmq.Socket[Any]) -> Iterator[Any]:
        head = 0
        self._last_reply = self._quiet_since = time.monotonic()
        self._give_up = self._contact.connect_deadline(self._last_reply)
        while True:
            self._fill(sock)
            if head in self._done:
                while head in self._done:
                    value = self._done.pop(head)
                    head += 1
                    if isinstance(value, ClientError) and not self._return_exceptions:
                        raise value
                    yield value
                # The time the caller spent on the results is no silence of the broker's.
                self._last_reply = self._quiet_since = time.monotonic()
            if self._exhausted and not self._outstanding:
                return
            self._wait(sock)

    def _fill(self, sock: zmq.Socket[Any]) -> None:
        """Send new tasks in one burst until `window` are in flight or the input ends."""
        if self._exhausted:
            return
        outstanding, function, options = self._outstanding, self._function, self._options
        burst: list[Execute] = []
        for _ in range(self._window - len(outstanding)):
            item = next(self._inputs, None)
            if item is None:
                self._exhausted = True
                break
            index, args = item
            if not isinstance(args, (tuple, list)):
                raise TypeError(
                    f"map() takes an iterable of argument tuples, e.g. [(1, 2), (3, 4)]; "
                    f"item {index} is a {type(args).__name__}"
                )
            task_id = f"{self._prefix}.{index}"
            spec = options.spec(task_id, function, encode_arguments(args))
            if self._parent is not None:
                spec = spec.replaced(parent=self._parent)
            if self._spans is not None:
                spec = self._spans.submitted(spec)
            execute = Execute(spec, self._contact.client_id)
            try:
                check_task_size(execute.spec, self._max_size)
            except MessageTooLarge as exc:
                self._done[index] = exc
                continue
            outstanding[task_id] = (index, execute)
            burst.append(execute)
        self._send_batches(sock, burst)

    def _send_batches(self, sock: zmq.Socket[Any], executes: list[Execute]) -> None:
        """Several tasks per EXECUTE message (protocol.md 2.1); a full queue leaves the rest
        to the next resend."""
        packed = self._packed
        for batch in _batches(executes):
            if not self._send(sock, [b"", *encode_tasks(batch, packed)]):
                return

    @staticmethod
    def _send(sock: zmq.Socket[Any], frames: list[bytes]) -> bool:
        """Send without blocking; False if the queue is full."""
        try:
            send_frames(sock, frames, NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _wait(self, sock: zmq.Socket[Any]) -> None:
        """Take every reply that arrives, or resend / give up when nothing does; look at
        the connection every LOOK_INTERVAL at most."""
        wake = self._quiet_since + self._resend_interval
        deadline = None if self._timeout is None else self._last_reply + self._timeout
        if deadline is not None:
            wake = min(wake, deadline)
        if self._readable(sock, wake):
            self._drain(sock)
            # Also while replies flow: the answers to tasks sent after a reconnection may
            # flow while the tasks sent before it are lost.
            if self._last_reply >= self._next_look:
                self._look(sock, self._last_reply)
            return
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            assert self._timeout is not None
            raise self._contact.no_answer(self._timeout, self._watch)
        if self._watch is not None:
            if now >= self._give_up:
                raise self._watch.unreachable(self._contact.connect_timeout or 0.0)
            return  # nothing left the socket yet: a resend would only queue duplicates
        if now >= self._next_look:
            self._look(sock, now)
        if now >= self._quiet_since + self._resend_interval:
            self._resend(sock)
            self._quiet_since = now

    def _readable(self, sock: zmq.Socket[Any], wake: float) -> bool:
        """Whether a reply waits, within `wake`; while the broker has not been reached, also
        by its connect deadline, watching the connection."""
        watch = self._watch
        if watch is None:
            wait = wake - time.monotonic()  # LOOK_MS at most, for `_look` between waits
            return wait_readable(sock, LOOK_MS if wait > LOOK_INTERVAL else poll_ms(wait))
        readable = watch.readable(poll_ms(min(wake, self._give_up) - time.monotonic()))
        if watch.closed:  # reached: from now on its Reconnects watches
            self._watch, self._reconnects = None, watch.kept
            self._quiet_since = time.monotonic()
        return readable

    def _look(self, sock: zmq.Socket[Any], now: float) -> None:
        """Send every task in flight again at once if the connection was lost and made
        again since the last look."""
        self._next_look = now + LOOK_INTERVAL
        if self._reconnects is not None and self._reconnects.reconnected():
            _log.info(
                "the connection to %s was made again: resending %d tasks at once",
                self._url,
                len(self._outstanding),
            )
            self._resend(sock)
            self._quiet_since = now

    def _resend(self, sock: zmq.Socket[Any]) -> None:
        self._send_batches(sock, [execute for _, execute in self._outstanding.values()])

    def _drain(self, sock: zmq.Socket[Any]) -> None:
        handle = self._handle
        while True:
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                break
            handle(frames)
        self._last_reply = self._quiet_since = time.monotonic()
        self._contact.answered = True
        if self._unpacked:
            self._unpacked = False
            self._resend(sock)

    def _handle(self, frames: list[bytes]) -> None:
        message = dealer_reply(frames, self._url)
        if message is None:
            return
        if type(message) is TaskCompleted:
            self._completed(message)
        elif type(message) is Batch:
            for item in message.items:
                if type(item) is TaskCompleted:
                    self._completed(item)
                else:
                    _log.warning("ignoring a bad answer in a batch from %s: %s", self._url, item)
        elif isinstance(message, Error):
            self._refused(message)
        else:
            _log.warning("ignoring an unexpected %s from the broker", type(message).__name__)

    def _completed(self, completed: TaskCompleted) -> None:
        entry = self._outstanding.pop(completed.task_id, None)
        if entry is not None:  # None: a second answer, to a resend
            self._done[entry[0]] = self._outcome(completed)
            if self._spans is not None:
                self._spans.answered(completed)

    def _outcome(self, completed: TaskCompleted) -> Any:
        if self._answers:
            return completed
        try:
            return result_of(self._function, completed, self._options.task_timeout)
        except ClientError as exc:
            return exc

    def _refused(self, error: Error) -> None:
        if self._packed and refuses_packing(error, self._url):
            self._packed, self._unpacked = False, True
            self._contact.packs = False
            return
        entry = None if error.task_id is None else self._outstanding.pop(error.task_id, None)
        if entry is None:
            _log.warning(
                "the broker at %s reported an error: %s [%s]", self._url, error.message, error.code
            )
            return
        self._done[entry[0]] = exc = broker_error(error)
        if self._spans is not None:
            self._spans.refused(error.task_id, str(exc))


EXECUTE_BATCH_TASKS = 64  # tasks in one EXECUTE message, at most


def _batches(executes: list[Execute]) -> Iterator[list[Execute]]:
    return batches(executes, lambda execute: len(execute.spec.args), EXECUTE_BATCH_TASKS)
