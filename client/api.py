"""The request/reply client: one task at a time over a REQ socket, Lazy Pirate style."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import EllipsisType, TracebackType
from typing import Any

import zmq

from broker.protocol import (
    DEFAULT_BROKER_URL,
    PRIORITY_DEFAULT,
    Error,
    Message,
    TaskCompleted,
)
from broker.wire import TimedReceiver, send_frames
from client.admin import BrokerRequests
from client.errors import BrokerTimeout, ClientError, broker_error
from client.options import TaskDefaults, TaskOptions, check_name, check_timeout
from client.payloads import encode_arguments, first_answer, result_of
from client.pipeline import Pipeline, open_socket, poll_ms

Timeout = float | None | EllipsisType  # ... means "the Client's timeout"


class Client(TaskDefaults, BrokerRequests):
    """A connection to a ZTB broker that submits tasks and waits for their results.

    `execute` sends one task over a REQ socket and waits for it (Lazy Pirate: when no
    reply comes within `resend_interval` seconds the socket is replaced and the same task
    id sent again, which the broker answers without running the task twice). `map` and
    `imap` keep many tasks in flight on a DEALER socket. `timeout` is the default total
    wait per call for the answer, None waits forever. `priority`, `retries`,
    `queue_timeout` and `task_timeout` are the defaults for the tasks this client sends;
    `task_timeout` is how long one attempt may run on its node before it is stopped and
    fails with exit 124 (None: the broker's limit, if any). `status()` and the
    dead-letter queue (`dead_letters`, `dead_letter`, `replay`, `purge_dead_letters`)
    come from BrokerRequests.

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
        task_timeout: float | None = None,
    ) -> None:
        if not resend_interval > 0:
            raise ValueError(f"resend_interval must be positive, got {resend_interval!r}")
        self.url = url
        self.timeout = check_timeout(timeout)
        self.resend_interval = resend_interval
        super().__init__(TaskOptions(priority, retries, queue_timeout, task_timeout))
        self._context: zmq.Context[Any] = zmq.Context()
        self._socket: zmq.Socket[Any] | None = None
        self._receiver: TimedReceiver | None = None  # on the current socket
        self._closed = False
        # Task ids: this client's random prefix and a count (cheaper than a uuid4 per task).
        self._id_prefix = os.urandom(8).hex()
        self._sent = 0

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
        task_timeout: float | None = None,
    ) -> Any:
        """Run `function(*args)` on a node and return its result.

        `timeout`: seconds to wait for the answer; `task_timeout`: seconds the function may
        run on its node (see `submit`). Raises TaskFailed when the task ends with a non-zero
        exit code (124 when it ran out of `task_timeout`), BrokerError when the broker
        refuses the request, BrokerTimeout when no answer comes in time, and TypeError for
        arguments JSON cannot carry.
        """
        options = self.options(priority, retries, queue_timeout, task_timeout)
        completed = self._submit(function, args, options, timeout, task_id)
        return result_of(function, completed, options.task_timeout)

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
        task_timeout: float | None = None,
    ) -> TaskCompleted:
        """Run `function(*args)` and return the broker's TASK_COMPLETED as it came,
        whatever its exit code. `retries`: extra attempts after failures; `queue_timeout`:
        seconds it may wait for a free node before it is answered Expired (exit 125);
        `task_timeout`: seconds one attempt may run before the node stops it and it fails
        with exit 124 Timeout (0.001 to 604800, i.e. 7 days). Each defaults to this
        client's, else the broker's. `timeout` is how long this call waits for the answer,
        not a limit on the function. Raises BrokerError, BrokerTimeout, TypeError, and
        ValueError for an option out of range."""
        options = self.options(priority, retries, queue_timeout, task_timeout)
        return self._submit(function, args, options, timeout, task_id)

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
        task_timeout: float | None = None,
    ) -> list[Any]:
        """`[function(*args) for args in arguments]`, run with up to `window` tasks in flight.

        Raises the first failure in input order (TaskFailed / BrokerError), or puts the
        exception objects in the list when `return_exceptions` is true; after a raise, the
        tasks still in flight run anyway and their results are dropped. `timeout` counts
        from the last reply of the broker; `task_timeout` limits each task's run on its
        node (see `submit`). TypeError for arguments JSON cannot carry.
        """
        return list(
            self.imap(
                function,
                arguments,
                window=window,
                priority=priority,
                timeout=timeout,
                return_exceptions=return_exceptions,
                task_timeout=task_timeout,
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
        task_timeout: float | None = None,
    ) -> Iterator[Any]:
        """Like `map`, but yields each result in input order as soon as it is known."""
        self._check_open()
        pipeline = Pipeline(
            self._context,
            self.url,
            function,
            arguments,
            window=window,
            options=self.options(priority, None, None, task_timeout),
            timeout=self._timeout(timeout),
            resend_interval=self.resend_interval,
            return_exceptions=return_exceptions,
        )
        return pipeline.run()

    # ------------------------------------------------------------------------- internals

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is ... else check_timeout(timeout)

    def _submit(
        self,
        function: str,
        args: Sequence[Any],
        options: TaskOptions,
        timeout: Timeout,
        task_id: str | None,
    ) -> TaskCompleted:
        if task_id is None:
            self._sent += 1
            task_id = f"{self._id_prefix}-{self._sent}"
        else:
            task_id = check_name("task_id", task_id)
        request = options.execute_frames(
            task_id, check_name("function", function), encode_arguments(args)
        )

        def answers(reply: Message) -> bool:
            if type(reply) is TaskCompleted:
                return reply.task_id == task_id
            return isinstance(reply, Error) and reply.task_id in (None, task_id)

        reply = self._exchange(request, answers, self._timeout(timeout))
        if not isinstance(reply, TaskCompleted):
            raise ClientError(f"unexpected reply {type(reply).__name__} to EXECUTE")
        return reply

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("this Client is closed; create a new one")

    def _connected(self) -> zmq.Socket[Any]:
        self._check_open()
        if self._socket is None:
            self._socket = open_socket(self._context, zmq.REQ, self.url)
            self._receiver = TimedReceiver(self._socket)
        return self._socket

    def _discard_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = self._receiver = None

    def _exchange(
        self, request: list[bytes], answers: Callable[[Message], bool], timeout: float | None
    ) -> Message:
        """Send `request` until a reply `answers` it; an ERROR answer raises BrokerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            sock = self._connected()
            send_frames(sock, request)
            while True:
                frames = self._receive(deadline, timeout)
                if frames is None:
                    # A REQ socket stays stuck on a lost request: start over on a new one.
                    self._discard_socket()
                    sock = self._connected()
                else:
                    reply = first_answer(frames, answers, self.url)
                    if reply is not None:
                        break
                # After a stale reply a REQ socket must send before it may receive again.
                send_frames(sock, request)
        except BaseException:
            self._discard_socket()  # its REQ state machine is mid-request
            raise
        if isinstance(reply, Error):
            raise broker_error(reply)
        return reply

    def _receive(self, deadline: float | None, timeout: float | None) -> list[bytes] | None:
        """The next reply, or None once `resend_interval` passes without one."""
        wait = self.resend_interval
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        if wait > 0:
            assert self._receiver is not None  # made with the socket, in _connected()
            frames = self._receiver.recv(poll_ms(wait))
            if frames is not None:
                return frames
        if deadline is not None and time.monotonic() >= deadline:
            assert timeout is not None
            raise BrokerTimeout(self.url, timeout)
        return None
