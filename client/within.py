"""TaskClient: the Client a function running on a node gets from `node.get_client()`.

It is a Client of the node's broker that asks the task it runs in (a `TaskContext`, given by
node.context) three things: the task's id, named as the `parent` of every task it submits
(cancelling the task cancels them, protocol.md 5.9); the next id derived from it, for each
task it submits without an id of its own (a task run again submits the same ids, so what
finished is not run twice); and a context to wait in, which lends the task's slot to other
tasks while it blocks. Every blocking call waits inside it: a future's `result()` and
`exception()`, `execute`, `execute_raw`, `map`, `imap`, `result`, `wait` and `as_completed`.
(`map` and `imap` number their tasks after one derived id: TASK/N.0, TASK/N.1, ...)
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from broker.protocol import TaskCompleted
from client.api import Client
from client.futures import TaskFuture
from client.jobs import JobFuture

T = TypeVar("T")


class TaskContext(Protocol):
    def parent(self) -> str | None: ...

    def next_task_id(self) -> str | None: ...

    def waiting(self) -> AbstractContextManager[None]: ...


class TaskClient(Client):
    """A Client for the task running in the calling thread (see the module's docstring)."""

    def __init__(self, url: str, context: TaskContext, **options: Any) -> None:
        super().__init__(url, **options)
        self._task = context
        self._task_ids = lambda: context.next_task_id() or self._numbered_id()
        self._parent = context.parent

    # -------------------------------------------------------------- waits lend the slot

    def submit(self, function: str, *args: Any, **options: Any) -> TaskFuture:
        future = super().submit(function, *args, **options)
        future.waiting = self._task.waiting
        return future

    def split(self, function: str, *args: Any, **options: Any) -> JobFuture:
        future = super().split(function, *args, **options)
        future.waiting = self._task.waiting
        return future

    def execute(self, function: str, *args: Any, **options: Any) -> Any:
        with self._task.waiting():
            return super().execute(function, *args, **options)

    def execute_raw(self, function: str, args: Sequence[Any], **options: Any) -> TaskCompleted:
        with self._task.waiting():
            return super().execute_raw(function, args, **options)

    def map(self, function: str, arguments: Iterable[Sequence[Any]], **options: Any) -> list[Any]:
        with self._task.waiting():
            return super().map(function, arguments, **options)

    def imap(
        self, function: str, arguments: Iterable[Sequence[Any]], **options: Any
    ) -> Iterator[Any]:
        with self._task.waiting():
            yield from super().imap(function, arguments, **options)

    def result(self, task_id: str, **options: Any) -> Any:
        with self._task.waiting():
            return super().result(task_id, **options)

    def as_completed(  # type: ignore[override]
        self, futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> Iterator[concurrent.futures.Future[T]]:
        with self._task.waiting():
            yield from Client.as_completed(futures, timeout)

    def wait(  # type: ignore[override]
        self,
        futures: Iterable[concurrent.futures.Future[T]],
        timeout: float | None = None,
        return_when: str = concurrent.futures.ALL_COMPLETED,
    ) -> Any:
        with self._task.waiting():
            return Client.wait(futures, timeout, return_when)
