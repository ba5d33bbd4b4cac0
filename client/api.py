"""The client: tasks one at a time over a REQ socket (Lazy Pirate style), as futures over
one DEALER socket, or many at once with `map`, and the broker's status and dead-letter
queue through the control client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import ALL_COMPLETED
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from broker.protocol import (
    DEFAULT_BROKER_URL,
    DEFAULT_MAX_MESSAGE_SIZE,
    ERR_MALFORMED,
    PRIORITY_DEFAULT,
    Error,
    Message,
    TaskCompleted,
    TaskSpec,
    execute_frames,
)
from broker.security import peer_keys
from broker.tracing import ClientSpans, for_client
from client.control import DEFAULT_TIMEOUT, ControlClient
from client.engine import Engine
from client.errors import BadReply, ClientError
from client.futures import TaskFuture, as_completed as _as_completed, wait as _wait
from client.jobs import JobFuture, start_split
from client.link import CLOSED, DEFAULT_CONNECT_TIMEOUT, RESEND_INTERVAL, ReqLink
from client.options import (
    CLIENT_ID_VARIABLE,
    After,
    RetryOn,
    TaskOptions,
    check_client_id,
    check_max_message_size,
    check_name,
    check_retry_on,
    check_task_size,
    check_timeout,
    with_dependencies,
    with_inputs,
)
from client.payloads import encode_arguments, encode_arguments_and_inputs, result_of
from client.pipeline import Pipeline
from client.progress import track

if TYPE_CHECKING:
    from concurrent.futures._base import DoneAndNotDoneFutures

_log = logging.getLogger(__name__)

Timeout = float | None | EllipsisType  # ... means "the Client's timeout"
T = TypeVar("T")
STOP_TIMEOUT = 5.0  # seconds close() waits for the futures' I/O thread to end


class Client:
    """A connection to a ZTB broker that submits tasks and waits for their results.

    `execute` sends one task over a REQ socket and waits for it (Lazy Pirate: when no
    reply comes within `resend_interval` seconds the socket is replaced and the same task
    id sent again, which the broker answers without running the task twice). `submit`
    returns a future at once (a TaskFuture, a concurrent.futures.Future); every future of
    a Client shares one DEALER socket, owned by a background I/O thread started on the
    first `submit`, which sends the tasks in batches and resends the unanswered ones when
    the broker is silent for `resend_interval`. `map` and `imap` keep many tasks in flight
    on a DEALER socket of their own. Each of these sockets resends at once, without waiting
    for `resend_interval`, when its connection to the broker was lost and made again (a
    broker restarted on its address: client/link.py Reconnects).

    `timeout` is the default total wait per blocking call for the answer (None waits
    forever); it does not bound a future, which waits as long as its `result(timeout)`
    says. `priority`, `retries`, `queue_timeout`, `task_timeout` and `retry_on` are the
    defaults for the tasks this client sends (`defaults`); `task_timeout` is how long one
    attempt may run on its node before it is stopped and fails with exit 124 (None: the
    broker's limit, if any); `retry_on` the failures retried besides node loss and crashes:
    "exception" (exit 1), "timeout" (exit 124), "all", a list of those, or None for the
    broker's default (`zbroker start --retry-on`). `connect_timeout`: seconds the first
    connection to the broker may take before a blocking call fails with BrokerUnreachable
    (None: only `timeout` limits it). `max_message_size`: a task whose EXECUTE is larger
    (its arguments, mostly) is refused with MessageTooLarge before it is sent; the broker's
    `--max-message-size` has the same default, 16 MiB. `status()` and the dead-letter queue
    (`dead_letters`, `dead_letter`, `replay`, `purge_dead_letters`) are asked through the
    REQ socket, by the control client `zbroker` uses too. `curve` and `broker_key`: this
    client's secret key file and the broker's public key file (`zbroker keys new`), for a
    broker started with --curve: every socket is encrypted and authenticated.
    `client_id` (default: the ZTB_CLIENT_ID variable, else none): on a broker without
    CURVE, the scope of this client's task ids (protocol.md 5.11): clients with other ids,
    or none, have tasks of their own under the same ids, and cannot fetch or cancel this
    one's. With CURVE the key is the scope and `client_id` is not needed.

    Threads: `submit`, `submit_async`, `as_completed`, `wait`, `close` and everything on a
    TaskFuture may be called from any thread at once. The blocking calls (`execute`,
    `execute_raw`, `map`, `imap`, `result`, `cancel`, `status` and the dead-letter calls)
    share the REQ socket: one thread at a time may make them. Futures are settled, and
    their done-callbacks run, in the I/O thread: a callback must not block.
    """

    def __init__(
        self,
        url: str = DEFAULT_BROKER_URL,
        *,
        timeout: float | None = 30.0,
        resend_interval: float = RESEND_INTERVAL,
        priority: int = PRIORITY_DEFAULT,
        retries: int | None = None,
        queue_timeout: float | None = None,
        task_timeout: float | None = None,
        retry_on: RetryOn = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        curve: str | os.PathLike[str] | None = None,
        broker_key: str | os.PathLike[str] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = check_timeout(timeout)
        self.defaults = TaskOptions(
            priority, retries, queue_timeout, task_timeout, check_retry_on(retry_on)
        )
        self.max_message_size = check_max_message_size(max_message_size)
        keys = peer_keys(curve, broker_key)  # KeyFileError (a ValueError) if they do not load
        client_id = check_client_id(client_id or os.environ.get(CLIENT_ID_VARIABLE) or None)
        self._context: zmq.Context[Any] = zmq.Context()
        try:
            self._link = ReqLink(
                url, resend_interval, self._context, connect_timeout, keys, client_id
            )
        except BaseException:
            self._context.destroy(linger=0)
            raise
        self._control = ControlClient(self._link)
        self._closed = False
        self._engine: Engine | None = None  # the futures' I/O thread, from the first submit
        self._lock = threading.Lock()  # guards `_closed` and `_engine`
        # Task ids: this client's random prefix and a count (cheaper than a uuid4 per task;
        # next() on a count is atomic, so threads that submit at once get different ids).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)
        # A task's client (client/within.py): ids derived from its task's, and its task as
        # the parent of what it sends. None: a client of its own.
        self._task_ids: Callable[[], str] | None = None
        self._parent: Callable[[], str | None] | None = None
        # The tasks' submit spans, when this process traces (broker.tracing); else None.
        tracing = for_client()
        self._spans = None if tracing is None else ClientSpans(tracing)

    @property
    def resend_interval(self) -> float:
        return self._link.resend_interval

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
        """Close the sockets (unanswered requests are abandoned). Futures not answered yet
        fail with ClientError (they are not cancelled: their tasks may still run, and
        `result(task_id)` on another client gets their answers). Safe to call twice, and
        from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine = self._engine
        self._link.close()
        if engine is not None and not engine.stop(STOP_TIMEOUT):
            # A done-callback holds the I/O thread (or calls close() itself): the thread
            # still uses its socket, so the context goes when the thread ends.
            engine.when_ended(self._destroy_context)
            return
        self._destroy_context()

    def _destroy_context(self) -> None:
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
        retry_on: RetryOn = None,
        after: After = None,
    ) -> Any:
        """Run `function(*args)` on a node and return its result.

        `timeout`: seconds to wait for the answer; the task options as for `execute_raw`.
        Raises TaskFailed when the task ends with a non-zero exit code (124 when it ran out
        of `task_timeout`), BrokerError when the broker refuses the request, BrokerTimeout
        when no answer comes in time, and TypeError for arguments JSON cannot carry.
        """
        spec = self._spec(
            function, args, task_id, priority, retries, queue_timeout, task_timeout, retry_on, after
        )
        return result_of(function, self._execute(spec, timeout), spec.task_timeout)

    def execute_raw(
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
        retry_on: RetryOn = None,
        after: After = None,
    ) -> TaskCompleted:
        """Run `function(*args)` and return the broker's TASK_COMPLETED as it came,
        whatever its exit code. `retries`: extra attempts after failures; `queue_timeout`:
        seconds it may wait for a free node before it is answered Expired (exit 125);
        `task_timeout`: seconds one attempt may run before the node stops it and it fails
        with exit 124 Timeout (0.001 to 604800, i.e. 7 days); `retry_on`: the failures
        retried besides node loss and crashes ("exception", "timeout", "all", a list of
        those, or an empty list for none of them); `after`: futures or task ids of tasks that
        must succeed before this one starts (if one fails, this one fails with exit 66
        DependencyFailed without running; if one is cancelled, so is this one). Each
        defaults to this client's, else the broker's. `timeout` is how long this call waits
        for the answer, not a limit on the function. Raises BrokerError, BrokerTimeout,
        TypeError, and ValueError for an option out of range."""
        spec = self._spec(
            function, args, task_id, priority, retries, queue_timeout, task_timeout, retry_on, after
        )
        return self._execute(spec, timeout)

    # ------------------------------------------------------------------------- futures

    def submit(
        self,
        function: str,
        *args: Any,
        priority: int | None = None,
        task_id: str | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
        task_timeout: float | None = None,
        retry_on: RetryOn = None,
        after: After = None,
    ) -> TaskFuture:
        """Send `function(*args)` and return its future at once: `result(timeout)` gives
        the function's result or raises TaskFailed (non-zero exit code), BrokerError (the
        broker refused the task) or ClientError (this client was closed first). The task
        options are those of `execute_raw`; this client's `timeout` does not apply.
        `future.cancel()` cancels the task at the broker unless it is answered already.
        Raises at once TypeError for arguments JSON cannot carry, ValueError for an option
        out of range (MessageTooLarge for a task over `max_message_size`), BadEndpoint for
        a URL ZeroMQ refuses, ClientError once closed."""
        spec = self._spec(
            function,
            args,
            task_id,
            priority,
            retries,
            queue_timeout,
            task_timeout,
            retry_on,
            after,
            futures=True,
        )
        check_task_size(spec, self.max_message_size)
        engine = self._futures_engine()
        future = TaskFuture(spec.task_id, spec.function, engine.cancel)
        engine.submit(spec, future)
        return future

    def split(
        self,
        function: str,
        *args: Any,
        parts: int,
        priority: int | None = None,
        task_id: str | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
        task_timeout: float | None = None,
        retry_on: RetryOn = None,
    ) -> JobFuture:
        """Run `function(*args)` as a job of about `parts` parts, for a function whose set
        declares how to split and combine it (`node.splittable`; the math set's
        `sum_squares` does), and return the future of the combined result at once.

        Its node's `FUNCTION:split` cuts the arguments into parts, each part runs as a task
        of `function` on whichever node is free, with its own retries, and
        `FUNCTION:combine` joins their results (node.splitting). The options apply to each
        of those tasks. `future.parts` lists the parts' futures once the split is done;
        `future.cancel()` cancels every task of the job. A part that fails for good fails
        the job: TaskFailed exit 66, naming the part. Raises at once ValueError for
        `parts` out of 1..10,000 or an option out of range, TypeError for arguments JSON
        cannot carry."""
        options = {
            "priority": priority,
            "retries": retries,
            "queue_timeout": queue_timeout,
            "task_timeout": task_timeout,
            "retry_on": retry_on,
        }
        if task_id is None:
            task_id = self._new_task_id()
        return start_split(self, function, args, parts, task_id, options)

    async def submit_async(
        self,
        function: str,
        *args: Any,
        priority: int | None = None,
        task_id: str | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
        task_timeout: float | None = None,
        retry_on: RetryOn = None,
        after: After = None,
    ) -> Any:
        """`await` the result of `function(*args)`: `submit` for asyncio (the task is sent
        when the coroutine starts). Cancelling the awaiting asyncio task cancels the task
        at the broker, as `future.cancel()` does."""
        future = self.submit(
            function,
            *args,
            priority=priority,
            task_id=task_id,
            retries=retries,
            queue_timeout=queue_timeout,
            task_timeout=task_timeout,
            retry_on=retry_on,
            after=after,
        )
        return await asyncio.wrap_future(future)

    @staticmethod
    def as_completed(
        futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future[T]]:
        """The futures as they finish or are cancelled (`concurrent.futures.as_completed`):
        TimeoutError if some are still pending after `timeout` seconds (None: no limit)."""
        return _as_completed(futures, timeout)

    @staticmethod
    def wait(
        futures: Iterable[concurrent.futures.Future[T]],
        timeout: float | None = None,
        return_when: str = ALL_COMPLETED,
    ) -> DoneAndNotDoneFutures[T]:
        """(done, not_done) sets of the futures once `return_when` (ALL_COMPLETED,
        FIRST_COMPLETED or FIRST_EXCEPTION, from concurrent.futures or client.futures)
        holds or `timeout` passes (`concurrent.futures.wait`)."""
        return _wait(futures, timeout, return_when)

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
        retry_on: RetryOn = None,
        progress: bool = False,
    ) -> list[Any]:
        """`[function(*args) for args in arguments]`, run with up to `window` tasks in flight.

        Raises the first failure in input order (TaskFailed / BrokerError, MessageTooLarge
        for a task over `max_message_size`), or puts the exception objects in the list when
        `return_exceptions` is true; after a raise, the tasks still in flight run anyway and
        their results are dropped. `timeout` counts from the last reply of the broker;
        `task_timeout` and `retry_on` as for `execute_raw`. `progress`: a progress bar on
        stderr (done/total when `arguments` has a length, rate, time left, failures) when
        stderr is a terminal. TypeError for arguments JSON cannot carry.
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
                retry_on=retry_on,
                progress=progress,
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
        retry_on: RetryOn = None,
        progress: bool = False,
        answers: bool = False,
    ) -> Iterator[Any]:
        """Like `map`, but yields each result in input order as soon as it is known.
        `answers`: yield each task's TASK_COMPLETED as it came, whatever its exit code
        (its task_id, exit_code, result frame, error, attempts), instead of its result."""
        self._check_open()
        pipeline = Pipeline(
            self._context,
            self.url,
            function,
            arguments,
            window=window,
            options=self.defaults.override(priority, task_timeout, retry_on),
            timeout=self._timeout(timeout),
            resend_interval=self.resend_interval,
            return_exceptions=return_exceptions,
            contact=self._link.contact,
            max_message_size=self.max_message_size,
            answers=answers,
            prefix=self._task_ids() if self._task_ids else None,
            parent=self._parent() if self._parent else None,
            spans=self._spans,
        )
        if not progress:
            return pipeline.run()
        total = len(arguments) if isinstance(arguments, Sized) else None
        return track(pipeline.run(), total, _failed)

    # ------------------------------------------------------------------------- by task id

    def result(self, task_id: str, *, timeout: Timeout = ...) -> Any:
        """The result of task `task_id` of this client's scope (its CURVE key or client id,
        protocol.md 5.11), whoever submitted it: at once if it finished lately
        (or failed for good: TaskFailed), else when it finishes, waiting up to `timeout`
        (the Client's by default; BrokerTimeout after it). Raises NotFound (a KeyError too)
        when the broker knows no such task: never submitted, or answered longer ago than it
        keeps answers (`zbroker start --keep-results`)."""
        completed = self._control.fetch(task_id, self._timeout(timeout))
        return result_of(f"task {task_id}", completed)

    def cancel(self, task_id: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Cancel task `task_id`: a queued task never runs, a running one is stopped on its
        node, and whoever waits for it gets TaskFailed exit 130 (Cancelled). Returns what
        the task was: "queued", "held" (sent to a node that had not started it), "running",
        or "finished" (it had been answered already: nothing changed). NotFound when the
        broker knows no such task."""
        return self._control.cancel(task_id, timeout)

    # ------------------------------------------------------------------------- the broker

    def status(
        self, timeout: float | None = DEFAULT_TIMEOUT, *, all_nodes: bool = False
    ) -> dict[str, Any]:
        """The broker's STATUS_REPLY body: nodes, queued, running, counters; `nodes` lists
        the 50 busiest nodes, or every one with `all_nodes` (see ControlClient.status)."""
        return self._control.status(timeout, all_nodes=all_nodes)

    def dead_letters(
        self, limit: int | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> list[dict[str, Any]]:
        """The dead letters (tasks that failed for good), newest first, at most `limit`
        (None: all of them); see ControlClient.dead_letters for the entries."""
        return self._control.dead_letters(limit, timeout=timeout).entries

    def dead_letter(
        self, task_id: str, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """One dead letter with its decoded arguments in "args"; NotFound (a KeyError too)
        when the task is not in the dead-letter queue. See ControlClient.dead_letter."""
        return self._control.dead_letter(task_id, timeout=timeout)

    def replay(
        self, task_id: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, list[str]]:
        """Queue a dead letter again (None: all of them): {"replayed": [ids], "missing":
        [ids]}. See ControlClient.replay."""
        return self._control.replay(task_id, timeout=timeout)

    def purge_dead_letters(
        self, task_id: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> int:
        """Forget a dead letter (None: every one of them); returns how many were removed."""
        return self._control.purge(task_id, timeout=timeout)

    # ------------------------------------------------------------------------- internals

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is ... else check_timeout(timeout)

    def _spec(
        self,
        function: str,
        args: Sequence[Any],
        task_id: str | None,
        priority: int | None,
        retries: int | None,
        queue_timeout: float | None,
        task_timeout: float | None,
        retry_on: RetryOn,
        after: After = None,
        futures: bool = False,
    ) -> TaskSpec:
        """The task a call describes, every option given checked, before anything is sent.
        `futures`: futures in `args` become inputs (protocol.md 5.8); else they are refused
        (a blocking call sent on another socket than the futures' cannot rely on them)."""
        if task_id is None:
            # `_new_task_id`, without its call on every task's way (but in a task's client)
            task_id = self._task_ids() if self._task_ids else f"{self._id_prefix}-{next(self._ids)}"
        else:
            task_id = check_name("task_id", task_id)
        function = check_name("function", function)
        if futures:
            frame, inputs = encode_arguments_and_inputs(args)
        else:
            frame, inputs = encode_arguments(args), None
        options = self.defaults
        parent = self._parent() if self._parent else None
        if (
            priority is None
            and retries is None
            and queue_timeout is None
            and task_timeout is None
            and retry_on is None
        ):
            # Most calls give no option of their own: the defaults, checked when set.
            spec = TaskSpec(
                task_id,
                function,
                frame,
                options.priority,
                options.retries,
                options.queue_timeout,
                options.task_timeout,
                options.retry_on,
                None,
                None,
                parent,
            )
        else:
            spec = options.spec(
                task_id, function, frame, priority, retries, queue_timeout, task_timeout, retry_on
            )
            if parent is not None:
                spec = spec.replaced(parent=parent)
        if inputs is not None:
            spec = with_inputs(spec, inputs)
        if after is not None:
            spec = with_dependencies(spec, after)
        if self._spans is not None:
            spec = self._spans.submitted(spec)
        return spec

    def _new_task_id(self) -> str:
        return self._task_ids() if self._task_ids else self._numbered_id()

    def _numbered_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _futures_engine(self) -> Engine:
        return self._engine or self._start_engine()

    def _start_engine(self) -> Engine:
        """The futures' I/O thread, started by the first `submit` of any thread."""
        with self._lock:
            self._check_open()
            if self._engine is None:
                self._engine = Engine(
                    self._context, self._link.contact, self.resend_interval, self._spans
                )
            return self._engine

    def _execute(self, spec: TaskSpec, timeout: Timeout) -> TaskCompleted:
        task_id = spec.task_id
        check_task_size(spec, self.max_message_size)

        def answers(reply: Message) -> bool:
            if type(reply) is TaskCompleted:
                return reply.task_id == task_id
            return isinstance(reply, Error) and reply.task_id in (None, task_id)

        wait = self.timeout if timeout is ... else check_timeout(timeout)  # `_timeout`, inline
        if self._spans is not None:
            return self._traced_exchange(spec, answers, wait)
        request = execute_frames(spec, self._link.contact.client_id)
        reply = self._link.exchange(request, answers, wait)
        if not isinstance(reply, TaskCompleted):
            raise BadReply(ERR_MALFORMED, f"the broker answered {type(reply).__name__} to EXECUTE")
        return reply

    def _traced_exchange(
        self, spec: TaskSpec, answers: Callable[[Message], bool], wait: float | None
    ) -> TaskCompleted:
        """`_execute`'s exchange, ending the task's submit span with its answer or error."""
        spans = self._spans
        assert spans is not None
        try:
            request = execute_frames(spec, self._link.contact.client_id)
            reply = self._link.exchange(request, answers, wait)
            if not isinstance(reply, TaskCompleted):
                kind = type(reply).__name__
                raise BadReply(ERR_MALFORMED, f"the broker answered {kind} to EXECUTE")
        except ClientError as exc:
            spans.refused(spec.task_id, str(exc))
            raise
        spans.answered(reply)
        return reply

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(CLOSED)


def _failed(outcome: Any) -> bool:
    """Whether an outcome of `imap` is a failure: an exception put in its place, or an
    answer with a non-zero exit code."""
    if isinstance(outcome, TaskCompleted):
        return outcome.exit_code != 0
    return isinstance(outcome, ClientError)
