"""`zsubmit --split N FUNCTION ARG...`: run one call as a split job (client/jobs.py), show
its parts finishing on a terminal, and give its answer as a TaskCompleted to print."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    TimeoutError as FutureTimeout,
    wait as wait_futures,
)
from typing import Any

from broker.protocol import ErrorInfo, TaskCompleted, dumps_payload
from client.api import Client
from client.errors import BrokerTimeout, TaskFailed
from client.jobs import JobFuture
from client.progress import Progress


def run_split(
    client: Client,
    function: str,
    values: list[Any],
    parts: int,
    task_id: str,
    wait: float | None,
    on_interrupt: Callable[[JobFuture], BaseException],
) -> TaskCompleted:
    """The answer of `function(*values)` run in `parts` parts, waiting up to `wait` seconds
    (None: forever): BrokerTimeout after that. Ctrl-C cancels the job and raises what
    `on_interrupt` makes of it."""
    deadline = None if wait is None else time.monotonic() + wait
    job = client.split(function, *values, parts=parts, task_id=task_id)
    try:
        _show_parts(job, deadline)
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        value = job.result(left)
    except KeyboardInterrupt:
        raise on_interrupt(job) from None
    except TaskFailed as exc:
        error = ErrorInfo(exc.error_type, exc.message)
        return TaskCompleted(task_id, exc.exit_code, b"null", error, exc.attempts)
    except FutureTimeout:
        raise BrokerTimeout(client.url, wait or 0.0, answered_before=True) from None
    return TaskCompleted(task_id, 0, dumps_payload(value), None, 1)


def _show_parts(job: JobFuture, deadline: float | None) -> None:
    """A progress bar of the job's parts (on a terminal) until they are all done."""
    parts = job.wait_for_parts(None if deadline is None else deadline - time.monotonic())
    if not parts:
        return
    pending: set[Future[Any]] = set(parts)
    with Progress(len(parts), "parts") as progress:
        if not progress.shown:
            return
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            done, pending = wait_futures(pending, timeout=left, return_when=FIRST_COMPLETED)
            for part in done:
                progress.advance(failed=part.cancelled() or part.exception() is not None)
