"""The request/reply client: one task at a time over a REQ socket, Lazy Pirate style."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import EllipsisType, TracebackType
from typing import Any

import zmq

from broker.protocol import (
    DEFAULT_BROKER_URL,
    PRIORITY_DEFAULT,
    Batch,
    Error,
    Execute,
    Message,
    ProtocolError,
    Status,
    StatusReply,
    TaskCompleted,
    decode,
    encode,
)
from client.errors import BrokerError, BrokerTimeout, ClientError
from client.pipeline import (
    Pipeline,
    check_name,
    check_priority,
    check_queue_timeout,
    check_retries,
    encode_arguments,
    open_socket,
    poll_ms,
    result_of,
)

_log = logging.getLogger(__name__)

Timeout = float | None | EllipsisType  # ... means "the Client's timeout"


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return timeout


class Client:
    """A connection to a ZTB broker that submits tasks and waits for their results.

    `execute` sends one task over a REQ socket and waits for it (Lazy Pirate: when no
    reply comes within `resend_interval` seconds the socket is replaced and the same task
    id sent again, which the broker answers without running the task twice). `map` and
    `imap` keep many tasks in flight on a DEALER socket. `timeout` is the default total
    wait per call, None waits forever.

    Not thread-safe: ZeroMQ sockets belong to one thread, so use one Client per thread.
    """

    def __init__(
        self,
        url: str = DEFAULT_BROKER_URL,
        *,
        timeout: float | None = 30.0,
        resend_interval: float = 2.5,
        priority: int = PRIORITY_DEFAULT,
        retries: int | None = None,
        queue_timeout: float | None = None,
    ) -> None:
        if not resend_interval > 0:
            raise ValueError(f"resend_interval must be positive, got {resend_interval!r}")
        self.url = url
        self.timeout = _check_timeout(timeout)
        self.resend_interval = resend_interval
        self.priority = check_priority(priority)
        self.retries = check_retries(retries)  # None: the broker's default
        self.queue_timeout = check_queue_timeout(queue_timeout)  # None: wait as long as needed
        self._context: zmq.Context[Any] = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (unanswered requests are abandoned). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._discard_socket()
        # destroy, not term: a half-consumed imap() must not keep close() waiting.
        self._context.destroy(linger=0)

    # ------------------------------------------------------------------------- one task

    def execute(
        self,
        function: str,
        *args: Any,
        priority: int | None = None,
        timeout: Timeout = ...,
        task_id: str | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
    ) -> Any:
        """Run `function(*args)` on a node and return its result.

        Raises TaskFailed when the task ends with a non-zero exit code, BrokerError when
        the broker refuses the request, BrokerTimeout when no answer comes in time, and
        TypeError for arguments JSON cannot carry.
        """
        completed = self.submit(
            function,
            args,
            priority=priority,
            timeout=timeout,
            task_id=task_id,
            retries=retries,
            queue_timeout=queue_timeout,
        )
        return result_of(function, completed)

    def submit(
        self,
        function: str,
        args: Sequence[Any],
        *,
        priority: int | None = None,
        timeout: Timeout = ...,
        task_id: str | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
    ) -> TaskCompleted:
        """Run `function(*args)` and return the broker's TASK_COMPLETED as it came,
        whatever its exit code. `retries`: extra attempts after failures (default: this
        client's, else the broker's); `queue_timeout`: seconds it may wait for a free node
        before it is answered Expired (exit 125). Raises BrokerError, BrokerTimeout,
        TypeError."""
        task_id = uuid.uuid4().hex if task_id is None else check_name("task_id", task_id)
        request = Execute(
            task_id,
            check_name("function", function),
            encode_arguments(args),
            self._priority(priority),
            self.retries if retries is None else check_retries(retries),
            self.queue_timeout if queue_timeout is None else check_queue_timeout(queue_timeout),
        )

        def answers(reply: Message) -> bool:
            if isinstance(reply, Error):
                return reply.task_id in (None, task_id)
            return isinstance(reply, TaskCompleted) and reply.task_id == task_id

        reply = self._exchange(encode(request), answers, self._timeout(timeout))
        if not isinstance(reply, TaskCompleted):
            raise ClientError(f"unexpected reply {type(reply).__name__} to EXECUTE")
        return reply

    def status(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """The broker's STATUS_REPLY body: nodes, queued, running, counters."""
        reply = self._exchange(
            encode(Status()),
            lambda m: isinstance(m, (StatusReply, Error)),
            _check_timeout(timeout),
        )
        if not isinstance(reply, StatusReply):
            raise ClientError(f"unexpected reply {type(reply).__name__} to STATUS")
        return reply.body

    # ------------------------------------------------------------------------- many tasks

    def map(
        self,
        function: str,
        arguments: Iterable[Sequence[Any]],
        *,
        window: int = 1000,
        priority: int | None = None,
        timeout: Timeout = ...,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """`[function(*args) for args in arguments]`, run with up to `window` tasks in flight.

        Raises the first failure in input order (TaskFailed / BrokerError), or puts the
        exception objects in the list when `return_exceptions` is true; after a raise, the
        tasks still in flight run anyway and their results are dropped. `timeout` counts
        from the last reply of the broker. TypeError for arguments JSON cannot carry.
        """
        return list(
            self.imap(
                function,
                arguments,
                window=window,
                priority=priority,
                timeout=timeout,
                return_exceptions=return_exceptions,
            )
        )

    def imap(
        self,
        function: str,
        arguments: Iterable[Sequence[Any]],
        *,
        window: int = 1000,
        priority: int | None = None,
        timeout: Timeout = ...,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Like `map`, but yields each result in input order as soon as it is known."""
        self._check_open()
        pipeline = Pipeline(
            self._context,
            self.url,
            function,
            arguments,
            window=window,
            priority=self._priority(priority),
            retries=self.retries,
            queue_timeout=self.queue_timeout,
            timeout=self._timeout(timeout),
            resend_interval=self.resend_interval,
            return_exceptions=return_exceptions,
        )
        return pipeline.run()

    # ------------------------------------------------------------------------- internals

    def _priority(self, priority: int | None) -> int:
        return self.priority if priority is None else check_priority(priority)

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.timeout if isinstance(timeout, EllipsisType) else _check_timeout(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("this Client is closed; create a new one")

    def _connected(self) -> zmq.Socket[Any]:
        self._check_open()
        if self._socket is None:
            self._socket = open_socket(self._context, zmq.REQ, self.url)
        return self._socket

    def _discard_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _exchange(
        self, request: list[bytes], answers: Callable[[Message], bool], timeout: float | None
    ) -> Message:
        """Send `request` until a reply `answers` it; an ERROR answer raises BrokerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock = self._connected()
            sock.send_multipart(request)
            while True:
                frames = self._receive(sock, deadline, timeout)
                if frames is None:
                    # A REQ socket stays stuck on a lost request: start over on a new one.
                    self._discard_socket()
                    sock = self._connected()
                else:
                    reply = next((m for m in self._decode(frames) if answers(m)), None)
                    if reply is not None:
                        break
                # After a stale reply a REQ socket must send before it may receive again.
                sock.send_multipart(request)
        except BaseException:
            self._discard_socket()  # its REQ state machine is mid-request
            raise
        if isinstance(reply, Error):
            raise BrokerError(reply.code, reply.message, reply.task_id)
        return reply

    def _receive(
        self, sock: zmq.Socket[Any], deadline: float | None, timeout: float | None
    ) -> list[bytes] | None:
        """The next reply, or None once `resend_interval` passes without one."""
        wait = self.resend_interval
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        if wait > 0 and sock.poll(poll_ms(wait)):
            frames: list[bytes] = sock.recv_multipart()
            return frames
        if deadline is not None and time.monotonic() >= deadline:
            assert timeout is not None
            raise BrokerTimeout(self.url, timeout)
        return None

    def _decode(self, frames: list[bytes]) -> list[Message]:
        """The messages in a reply: one, or the tasks of a batch (protocol.md 2.1)."""
        try:
            message = decode(frames)
        except ProtocolError as exc:
            _log.warning("ignoring a malformed reply from the broker at %s: %s", self.url, exc)
            return []
        if isinstance(message, Batch):
            return [item for item in message.items if not isinstance(item, ProtocolError)]
        return [message]
