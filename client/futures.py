"""The futures `Client.submit` returns, and `as_completed` / `wait` over them.

A TaskFuture is a `concurrent.futures.Future`: everything that takes Futures takes it
(`concurrent.futures.wait`, `asyncio.wrap_future`, ...). It stays pending until the
broker's answer settles it (`running()` is never true: the client does not know when a
node starts the task), so `cancel()` works until the answer is in.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures._base import DoneAndNotDoneFutures

T = TypeVar("T")

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "TaskFuture",
    "as_completed",
    "wait",
]

# What a future calls to cancel its task at the broker: (future, task_id) -> None.
Canceller = Callable[["TaskFuture", str], None]


class TaskFuture(concurrent.futures.Future[Any]):
    """The answer to come of task `task_id` (`function` with its arguments).

    `result(timeout)` returns the function's result, or raises what `Client.execute` would:
    TaskFailed for a non-zero exit code, BrokerError when the broker refused the task,
    ClientError when the client was closed first (the task itself may still run).
    `cancel()` cancels the task at the broker too (protocol.md 5.6) unless it is answered
    already: then it returns False, as for any finished Future.
    """

    def __init__(self, task_id: str, function: str, canceller: Canceller) -> None:
        super().__init__()
        self.task_id = task_id
        self.function = function
        self._canceller = canceller
        # Around a blocking wait, from a client inside a task (node.context): lends the
        # task's slot while it waits. None: a plain wait.
        self.waiting: Callable[[], AbstractContextManager[None]] | None = None

    def result(self, timeout: float | None = None) -> Any:
        if self.waiting is None or self.done():
            return super().result(timeout)
        with self.waiting():
            return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self.waiting is None or self.done():
            return super().exception(timeout)
        with self.waiting():
            return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the task: True if it was not answered yet (then `result()` raises
        CancelledError, and the broker's answer for it, exit 130, is ignored); False if it
        was. The CANCEL goes to the broker from the client's I/O thread."""
        was_cancelled = self.cancelled()
        if not super().cancel():
            return False
        if not was_cancelled:
            self._canceller(self, self.task_id)
        return True

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<TaskFuture {self.task_id} {self.function} {state}>"


def as_completed(
    futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None
) -> Iterator[concurrent.futures.Future[T]]:
    """The futures as they finish (or are cancelled), as `concurrent.futures.as_completed`:
    TimeoutError if some are still pending after `timeout` seconds (None: no limit)."""
    return concurrent.futures.as_completed(futures, timeout)


def wait(
    futures: Iterable[concurrent.futures.Future[T]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures[T]:
    """(done, not_done) sets, as `concurrent.futures.wait`: returns when `return_when`
    (ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION) holds or `timeout` passes."""
    return concurrent.futures.wait(futures, timeout, return_when)
