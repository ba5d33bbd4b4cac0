"""The task table: every task the broker accepted and has not answered, and its state.

A task is its `TaskSpec` (frozen, as submitted) and the little the broker adds while it
owns it. Its state moves only along these edges, checked on every move:

    QUEUED         waits in the queue for a node with a free place
      -> RUNNING        a node with a free slot took it (a RUN was sent)
      -> HELD           a node with a free place in its prefetch window took it
      -> DONE           answered without running: expired, refused at the end of a grace,
                        or a late success of an attempt given up earlier
    HELD           a node holds it, behind tasks its slots run first; not started yet
      -> RUNNING        a slot freed on its node (or its RESULT came first)
      -> QUEUED         given back (RETRACT), or its node was lost: the attempt is undone
      -> RUNNING, HELD  given back or its node lost, and another node took it at once
      -> DONE           given back after its queue timeout passed: answered Expired
    RUNNING        one node holds the current attempt
      -> DONE           answered: its RESULT, or no attempt left
      -> WAITING_RETRY  the attempt failed and another waits for its backoff
      -> QUEUED         the attempt failed, another may start at once, no place is free
      -> RUNNING, HELD  the attempt failed and another node took the next one at once
    WAITING_RETRY  waits for the backoff before its next attempt
      -> QUEUED, RUNNING, HELD  the backoff is over
      -> DONE           a late success of an attempt given up earlier
    WAITING_DEPS   accepted, waits for the tasks it depends on to succeed (not queued)
      -> QUEUED         the last of them succeeded (admission then starts it or queues it)
      -> DONE           one of them failed or was cancelled, it was cancelled, or expired
    UNCLAIMED      restored (or accepted) by a restarted broker: its last attempt may still
                   run on a node that has not registered again (protocol.md 7.3); not queued
      -> RUNNING, HELD  a node claimed that attempt (adopted), or it was placed again
      -> QUEUED         no node claimed it in time: placed again, no place is free
      -> DONE           cancelled, or expired
    (QUEUED -> WAITING_DEPS: at acceptance, when a task it depends on is pending.
     QUEUED -> UNCLAIMED: at restore, or accepted while restored tasks wait.)

A task leaves the table when it is DONE; its answer is kept by `ResultCache` from then on.
Pure state: no sockets, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

from msgspec import Struct

from broker.core.metrics import FunctionMetrics
from broker.protocol import TaskSpec


class TaskState(enum.IntEnum):
    """Small integers, so that the table indexes its counts and edges by them (an IntEnum
    hashes and indexes in C; a plain Enum hashes in Python)."""

    QUEUED = 0
    RUNNING = 1
    WAITING_RETRY = 2
    DONE = 3
    HELD = 4
    WAITING_DEPS = 5
    UNCLAIMED = 6


QUEUED, RUNNING, WAITING_RETRY, DONE, HELD, WAITING_DEPS, UNCLAIMED = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.WAITING_RETRY,
    TaskState.DONE,
    TaskState.HELD,
    TaskState.WAITING_DEPS,
    TaskState.UNCLAIMED,
)

MOVES: tuple[frozenset[TaskState], ...] = (  # by state: the states it may move to
    frozenset({RUNNING, HELD, DONE, WAITING_DEPS, UNCLAIMED}),  # QUEUED
    frozenset({DONE, WAITING_RETRY, QUEUED, RUNNING, HELD}),  # RUNNING
    frozenset({QUEUED, RUNNING, HELD, DONE}),  # WAITING_RETRY
    frozenset(),  # DONE
    frozenset({RUNNING, QUEUED, HELD, DONE}),  # HELD
    frozenset({QUEUED, DONE}),  # WAITING_DEPS
    frozenset({RUNNING, HELD, QUEUED, DONE}),  # UNCLAIMED
)

ProcessKey = tuple[str, str, int]  # a node process: (name, host, pid) from its REGISTER


class LostAttempt:
    """An attempt the broker gave up on (its node was lost) while the node may still
    deliver it: a success from that node, for that attempt, is still the task's answer."""

    __slots__ = ("attempt", "holder", "process")

    def __init__(self, attempt: int, holder: bytes, process: ProcessKey) -> None:
        self.attempt = attempt
        self.holder = holder  # the identity that held it
        self.process = process  # and the process, which may register again under another

    def matches(self, attempt: int | None, identity: bytes, process: ProcessKey | None) -> bool:
        if attempt is not None and attempt != self.attempt:
            return False
        return identity == self.holder or process == self.process


class Task(Struct, eq=False):
    """An accepted task that has not been answered yet (mutable; owned by the table). A
    msgspec Struct: one is made per task, and its constructor runs in C. Compared by
    identity."""

    spec: TaskSpec
    seq: int  # submission order; kept when requeued, so it keeps its place
    submitted_at: float
    requesters: list[bytes]  # who gets the answer
    retries: int  # the spec's, or the broker's default
    task_timeout: float | None  # the spec's, or the broker's default
    attempt: int = 0  # attempts started so far
    state: TaskState = QUEUED
    holder: bytes | None = None  # the node running (or holding) the current attempt
    timer: int = 0  # see broker.core.timers
    queue_stamp: int = 0  # see broker.core.queues
    fair_tag: int | None = None  # its turn among its priority's submitters (queues.py)
    started_at: float = 0.0  # when its current attempt started, as far as the broker knows
    lost: list[LostAttempt] | None = None
    expiring: bool = False  # HELD, asked back because its queue timeout passed
    waiting_for: int = 0  # WAITING_DEPS: the tasks it depends on that have not succeeded yet
    # With inputs (protocol.md 5.8): their results so far, by task id, and once all are
    # in, the payload its RUNs carry instead of the arguments.
    inputs_got: dict[str, bytes] | None = None
    run_args: bytes | None = None
    # Its function's figures (broker.core.metrics), found once; None when not measured.
    fm: FunctionMetrics | None = None
    # Who submitted it, for its pending count: the CURVE key (str) of the submitter, or
    # without CURVE its connection (bytes).
    owner: str | bytes | None = None

    def __repr__(self) -> str:
        return f"<Task {self.spec.task_id} {self.state.name.lower()} attempt {self.attempt}>"


class TaskTable:
    """The tasks by id, and how many run, are held and wait for a retry (O(1) for the
    views; how many wait for their dependencies follows from these and the queue's size)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        # Tasks per state (those of QUEUED and DONE are not kept up to date: the queue
        # counts the first, and the second leave the table).
        self._counts = [0] * len(TaskState)
        # The pending task of an id, or None: the dict's own method, a C call on the
        # scheduler's per-task path.
        self.get: Callable[[str], Task | None] = self._tasks.get

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def running(self) -> int:
        return self._counts[RUNNING]

    @property
    def held(self) -> int:
        return self._counts[HELD]

    @property
    def waiting_retry(self) -> int:
        return self._counts[WAITING_RETRY]

    @property
    def unclaimed(self) -> int:
        return self._counts[UNCLAIMED]

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def add(self, task: Task) -> None:
        """A task accepted, in state QUEUED (admission then starts it or queues it)."""
        if task.spec.task_id in self._tasks or task.state is not QUEUED:
            raise ValueError(f"task {task.spec.task_id} is pending already, or not new")
        self._tasks[task.spec.task_id] = task

    def move(self, task: Task, state: TaskState) -> None:
        """Change a pending task's state along one of MOVES' edges; DONE takes it out."""
        old = task.state
        if state not in MOVES[old]:
            raise AssertionError(f"task {task.spec.task_id}: no move from {old} to {state}")
        task.state = state
        counts = self._counts
        counts[old] -= 1
        counts[state] += 1
        if state is DONE:
            del self._tasks[task.spec.task_id]

    def check_invariants(self) -> None:
        counts = [0] * len(TaskState)
        for task_id, task in self._tasks.items():
            assert task.spec.task_id == task_id, f"{task_id} filed under another id"
            assert task.state is not DONE, f"{task_id} is DONE but still pending"
            counts[task.state] += 1
            on_node = task.state is RUNNING or task.state is HELD
            assert (task.holder is not None) == on_node, f"{task_id}: holder iff on a node"
            assert task.attempt >= (1 if on_node else 0), f"{task_id}: on a node, no attempt"
            assert not task.expiring or task.state is HELD, f"{task_id}: expiring, not held"
        for state in (RUNNING, HELD, WAITING_RETRY, WAITING_DEPS, UNCLAIMED):
            assert counts[state] == self._counts[state], f"the count of {state.name} drifted"
