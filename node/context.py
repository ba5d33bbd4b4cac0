"""What a function running on a node knows of its task, and `get_client()`.

    from node import get_client

    def total_of(numbers):
        client = get_client()  # a client of the broker this node serves
        futures = [client.submit("square", n) for n in numbers]
        return sum(f.result() for f in futures)

The slots keep each thread's `Current` up to date while a function runs, which makes its
task the current one of that thread. A client from `get_client()` (one per thread, kept) then:

- names the current task as the `parent` of what it submits, so that cancelling the task
  cancels them (protocol.md 5.9);
- gives them ids derived from the task's (`TASK/0`, `TASK/1`, ... in submission order), so
  that the task, run again after its node was lost, asks for the same tasks: those that
  finished are answered from the broker's kept answers, not run twice;
- lends the task's slot while it waits for them (a future's `result()`, `execute`, `map`,
  `wait`, `as_completed`): the node says WAITING, runs other tasks meanwhile (its own
  children among them), and takes the slot back when the wait ends. So tasks that wait for
  tasks never deadlock a cluster whose every slot holds a waiting parent.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from broker.protocol import MAX_NAME_LENGTH, Run

if TYPE_CHECKING:
    from client.api import Client

# Called from a task's thread: `lend(task_id, waiting)` tells the node (and through it the
# broker) that the task waits for other tasks (True) or goes on (False).
Lend = Callable[[str, bool], None]


class Current:
    """The task one thread runs: a slot sets `run` before calling its function and back to
    None after (a plain attribute: a threading.local's costs seven times as much, on every
    task's way). Each thread that runs tasks registers its own with `runs_tasks()`."""

    __slots__ = ("run",)

    def __init__(self) -> None:
        self.run: Run | None = None


_threads = threading.local()  # each thread's Current, once it runs tasks


def runs_tasks() -> Current:
    """This thread runs tasks: the Current its slot keeps up to date."""
    current = _threads.current = Current()
    return current


# Set by the node process at start: its broker, how its slots lend a waiting task's slot,
# and with CURVE its key files (a task's client connects with the node's key).
_broker: dict[str, Any] = {"url": None, "lend": None, "curve": None, "broker_key": None}


def configure(
    broker_url: str,
    lend: Lend | None,
    curve: str | None = None,
    broker_key: str | None = None,
) -> None:
    """The node process's broker, how its slots lend a waiting task's slot, and its CURVE
    key files (None: no CURVE)."""
    _broker.update(url=broker_url, lend=lend, curve=curve, broker_key=broker_key)


def current_run() -> Run | None:
    """The task this thread runs, or None outside a task."""
    current: Current | None = getattr(_threads, "current", None)
    return None if current is None else current.run


def get_client() -> Client:
    """A client of the broker this node serves, for the task running in this thread (see
    the module's docstring). Raises RuntimeError outside a task running on a node."""
    url = _broker["url"]
    if current_run() is None or url is None:
        raise RuntimeError(
            "get_client() works only inside a function running as a task on a node; "
            "elsewhere, use client.Client(url)"
        )
    client: Client | None = getattr(_threads, "client", None)
    if client is None:
        from client.within import TaskClient  # the client package only when a task asks

        keys = {"curve": _broker["curve"], "broker_key": _broker["broker_key"]}
        client = _threads.client = TaskClient(url, _TaskContext(), **keys)
    return client


class _Progress:
    """What one task of a thread has done with its client: children numbered, waits open."""

    __slots__ = ("children", "run", "waits")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.children = itertools.count()
        self.waits = 0  # waits under way, one inside another (only the outer one lends)


def _progress() -> _Progress | None:
    """The current task's progress, made anew when the thread runs another task."""
    run = current_run()
    if run is None:
        return None
    progress: _Progress | None = getattr(_threads, "progress", None)
    if progress is None or progress.run is not run:
        progress = _threads.progress = _Progress(run)
    return progress


class _TaskContext:
    """What a TaskClient asks of the task running in its thread (client/within.py)."""

    def parent(self) -> str | None:
        run = current_run()
        return None if run is None else run.task_id

    def next_task_id(self) -> str | None:
        """The next child id of the current task: TASK/N, or a digest of TASK when that
        would be too long; None outside a task."""
        progress = _progress()
        if progress is None:
            return None
        n, parent = next(progress.children), progress.run.task_id
        task_id = f"{parent}/{n}"
        if len(task_id) > MAX_NAME_LENGTH:
            digest = hashlib.blake2b(parent.encode(), digest_size=16).hexdigest()
            task_id = f"{digest}/{n}"
        return task_id

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Lend the current task's slot while the caller waits for other tasks."""
        progress = _progress()
        lend: Lend | None = _broker["lend"]
        if progress is None or lend is None:
            yield
            return
        task_id = progress.run.task_id
        progress.waits += 1
        if progress.waits == 1:
            lend(task_id, True)
        try:
            yield
        finally:
            progress.waits -= 1
            if not progress.waits:
                lend(task_id, False)
