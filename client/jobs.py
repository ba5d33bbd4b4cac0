"""Split jobs: one call of a function run as many tasks, and its result combined.

`Client.split(function, *args, parts=N)` returns a JobFuture at once and runs, all through
the Client's futures:

1. the split, a task `FUNCTION:split` (parts, *args) that a node offering a function
   declared `@splittable` runs (node.splitting): it returns the argument lists of the parts;
2. the parts, one task of FUNCTION each, sent from the split's done-callback;
3. the combine, a task `FUNCTION:combine` whose argument is the list of the parts' futures,
   so that the broker starts it once every part has succeeded and its node receives their
   results (protocol.md 5.8); a part that fails for good fails it (exit 66, naming the
   part). More parts than one task may depend on are combined in rounds of 256.

The combine's task id is the job's, so `Client.result(job_id)` and `zsubmit result` find the
job's answer; the other tasks' ids derive from it (`JOB:split`, `JOB:0`, ..., `JOB:c1.0`).
Nothing waits in the caller's thread: the split's done-callback runs in the Client's I/O
thread, and only posts tasks to it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import TYPE_CHECKING, Any

from broker.protocol import EXIT_UNKNOWN_FUNCTION, MAX_DEPENDENCIES, MAX_NAME_LENGTH
from client.errors import ClientError, TaskFailed
from client.futures import TaskFuture
from client.options import check_task_size

if TYPE_CHECKING:
    from client.api import Client

MAX_PARTS = 10_000  # parts of one job: far more than slots, far fewer than a map's tasks
SPLIT, COMBINE = ":split", ":combine"
_SUFFIX_ROOM = 16  # characters a job's task ids add to its id (":split", ":9999", ":c9.99")


class JobFuture(TaskFuture):
    """The combined result to come of a split job (a TaskFuture of its combine task).

    `parts`: the futures of its parts, empty until the split has answered. `cancel()`
    cancels every task of the job that has not finished."""

    def __init__(self, task_id: str, function: str, job: _Job) -> None:
        super().__init__(task_id, function, job.cancel)
        self._job = job

    @property
    def parts(self) -> list[TaskFuture]:
        return list(self._job.parts)

    def wait_for_parts(self, timeout: float | None = None) -> list[TaskFuture]:
        """The parts' futures once the split has answered (empty if it failed, or if it
        has not answered within `timeout` seconds)."""
        self._job.planned.wait(timeout)
        return self.parts


def start_split(
    client: Client,
    function: str,
    args: Sequence[Any],
    parts: int,
    job_id: str,
    options: dict[str, Any],
) -> JobFuture:
    """Send the split of a job and return its future (see the module's docstring)."""
    if not isinstance(parts, int) or isinstance(parts, bool) or not 1 <= parts <= MAX_PARTS:
        raise ValueError(f"parts must be an integer from 1 to {MAX_PARTS}, got {parts!r}")
    if len(job_id) > MAX_NAME_LENGTH - _SUFFIX_ROOM:
        raise ValueError(
            f"the task id of a split job may have at most {MAX_NAME_LENGTH - _SUFFIX_ROOM} "
            f"characters (its parts' ids add a suffix), got {len(job_id)}"
        )
    job = _Job(client, function, job_id, options)
    future = JobFuture(job_id, function, job)
    job.future = future
    plan = client.submit(function + SPLIT, parts, *args, task_id=job_id + SPLIT, **options)
    job.started(plan)
    return future


class _Job:
    """The tasks of one job, and what is done when its split answers or it is cancelled."""

    def __init__(self, client: Client, function: str, job_id: str, options: dict[str, Any]) -> None:
        self.client = client
        self.function = function
        self.job_id = job_id
        self.options = options
        self.future: JobFuture | None = None
        self.parent = client._parent() if client._parent else None  # a task's client's task
        self.parts: list[TaskFuture] = []
        self._tasks: list[TaskFuture] = []  # every task sent but the combine
        self._cancelled = False
        self._lock = threading.Lock()
        self.planned = threading.Event()  # set once the split answered and parts were sent

    def started(self, plan: TaskFuture) -> None:
        with self._lock:
            self._tasks.append(plan)
        plan.add_done_callback(self._planned)

    def _planned(self, plan: Future[Any]) -> None:
        """The split answered: send the parts and the combine, or fail the job."""
        future = self.future
        assert future is not None
        try:
            cut = plan.result()
            argument_lists = _argument_lists(self.function, cut)
            with self._lock:
                if self._cancelled:
                    return
                self._send(argument_lists, future)
        except CancelledError:
            return
        except TaskFailed as exc:
            _fail(future, _not_splittable(exc, self.function) or exc)
        except BaseException as exc:
            _fail(future, exc)
        finally:
            self.planned.set()

    def _send(self, argument_lists: list[list[Any]], future: JobFuture) -> None:
        job_id, function = self.job_id, self.function
        for i, arguments in enumerate(argument_lists):
            part = self._submit(function, arguments, f"{job_id}:{i}")
            self.parts.append(part)
            self._tasks.append(part)
        level: list[TaskFuture] = list(self.parts)
        rounds = 0
        while len(level) > MAX_DEPENDENCIES:
            rounds += 1
            step = MAX_DEPENDENCIES
            groups = [level[i : i + step] for i in range(0, len(level), step)]
            level = [
                self._submit(function + COMBINE, [group], f"{job_id}:c{rounds}.{n}")
                for n, group in enumerate(groups)
            ]
            self._tasks += level
        self._submit(function + COMBINE, [level], job_id, future)

    def _submit(
        self, function: str, args: list[Any], task_id: str, future: TaskFuture | None = None
    ) -> TaskFuture:
        """Send one task of the job (`future`: the one its answer settles, else a new one).
        Called in the client's I/O thread: the job's parent, if it has one, is the task that
        started the job, taken then."""
        client, options = self.client, self.options
        spec = client._spec(
            function,
            args,
            task_id,
            options["priority"],
            options["retries"],
            options["queue_timeout"],
            options["task_timeout"],
            options["retry_on"],
            futures=True,
        )
        check_task_size(spec, client.max_message_size)
        if self.parent is not None:
            spec = spec.replaced(parent=self.parent)
        engine = client._futures_engine()
        if future is None:
            future = TaskFuture(task_id, function, engine.cancel)
        engine.submit(spec, future)
        return future

    def cancel(self, future: TaskFuture, task_id: str) -> None:
        """The job's future was cancelled: cancel its tasks at the broker."""
        with self._lock:
            self._cancelled = True
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self.client._futures_engine().cancel(future, task_id)


def _argument_lists(function: str, cut: Any) -> list[list[Any]]:
    """What the split returned, checked: a non-empty list of argument lists."""
    if not isinstance(cut, list) or not cut or not all(isinstance(a, list) for a in cut):
        raise ClientError(
            f"{function}{SPLIT} returned {str(cut)[:100]}, not a list of argument lists; "
            "fix the split function its set declares"
        )
    if len(cut) > MAX_PARTS:
        raise ClientError(
            f"{function}{SPLIT} returned {len(cut)} parts; a job may have at most {MAX_PARTS}"
        )
    return cut


def _not_splittable(exc: TaskFailed, function: str) -> TaskFailed | None:
    """The failure of a split that no node offers, said as what to do about it."""
    if exc.exit_code != EXIT_UNKNOWN_FUNCTION:
        return None
    message = (
        f"no node offers {function}{SPLIT}: {function} does not declare how to split it, or "
        f"no node offering it is registered; declare it in its function set with "
        f"@splittable(split=..., combine=...) (from node import splittable)"
    )
    return TaskFailed(function, exc.task_id, exc.exit_code, exc.error_type, message, exc.attempts)


def _fail(future: JobFuture, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
        future.set_exception(exc)
