"""The task table: every task the broker accepted and has not answered, and its state.

A task is its `TaskSpec` (frozen, as submitted) and the little the broker adds while it
owns it. Its state moves only along these edges, checked on every move:

    QUEUED         waits in the queue for a node with a free slot
      -> RUNNING        a node with a free slot took it (a RUN was sent)
      -> DONE           answered without running: expired, refused at the end of a grace,
                        or a late success of an attempt given up earlier
    RUNNING        one node holds the current attempt
      -> DONE           answered: its RESULT, or no attempt left
      -> WAITING_RETRY  the attempt failed and another waits for its backoff
      -> QUEUED         the attempt failed, another may start at once, no slot is free
      -> RUNNING        the attempt failed and another started at once on a free slot
    WAITING_RETRY  waits for the backoff before its next attempt
      -> QUEUED, RUNNING  the backoff is over (RUNNING if a slot is free)
      -> DONE           a late success of an attempt given up earlier

A task leaves the table when it is DONE; its answer is kept by `ResultCache` from then on.
Pure state: no sockets, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from broker.protocol import TaskSpec


class TaskState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_RETRY = "waiting_retry"
    DONE = "done"


QUEUED, RUNNING, WAITING_RETRY, DONE = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.WAITING_RETRY,
    TaskState.DONE,
)

MOVES: dict[TaskState, frozenset[TaskState]] = {
    QUEUED: frozenset({RUNNING, DONE}),
    RUNNING: frozenset({DONE, WAITING_RETRY, QUEUED, RUNNING}),
    WAITING_RETRY: frozenset({QUEUED, RUNNING, DONE}),
    DONE: frozenset(),
}

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


class Task:
    """An accepted task that has not been answered yet (mutable; owned by the table)."""

    __slots__ = (
        "attempt",
        "holder",
        "lost",
        "queue_stamp",
        "requesters",
        "retries",
        "seq",
        "spec",
        "state",
        "submitted_at",
        "task_timeout",
        "timer",
    )

    def __init__(
        self,
        spec: TaskSpec,
        seq: int,
        submitted_at: float,
        requesters: list[bytes],
        retries: int,
        task_timeout: float | None,
        attempt: int = 0,
    ) -> None:
        self.spec = spec
        self.seq = seq  # submission order; kept when requeued, so it keeps its place
        self.submitted_at = submitted_at
        self.retries = retries  # the spec's, or the broker's default
        self.task_timeout = task_timeout  # the spec's, or the broker's default
        self.state = QUEUED
        self.attempt = attempt  # attempts started so far
        self.holder: bytes | None = None  # the node running the current attempt
        self.requesters = requesters  # who gets the answer
        self.timer = 0  # see broker.core.timers
        self.queue_stamp = 0  # see broker.core.queues
        self.lost: list[LostAttempt] | None = None

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    def __repr__(self) -> str:
        return f"<Task {self.spec.task_id} {self.state.value} attempt {self.attempt}>"


class TaskTable:
    """The tasks by id, with a count per state (O(1) for the views)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._counts = dict.fromkeys(TaskState, 0)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def count(self, state: TaskState) -> int:
        return self._counts[state]

    def add(self, task: Task) -> None:
        """A task accepted in state QUEUED (admission then starts it or queues it)."""
        if task.spec.task_id in self._tasks:
            raise ValueError(f"task {task.spec.task_id} is pending already")
        self._tasks[task.spec.task_id] = task
        self._counts[task.state] += 1

    def move(self, task: Task, state: TaskState) -> None:
        """Change a pending task's state along one of MOVES' edges; DONE takes it out."""
        old = task.state
        if state not in MOVES[old]:
            raise AssertionError(f"task {task.spec.task_id}: no move from {old} to {state}")
        self._counts[old] -= 1
        task.state = state
        if state is DONE:
            del self._tasks[task.spec.task_id]
        else:
            self._counts[state] += 1

    def check_invariants(self) -> None:
        counts = dict.fromkeys(TaskState, 0)
        for task_id, task in self._tasks.items():
            assert task.spec.task_id == task_id, f"{task_id} filed under another id"
            assert task.state is not DONE, f"{task_id} is DONE but still pending"
            counts[task.state] += 1
            running = task.state is RUNNING
            assert (task.holder is not None) == running, f"{task_id}: holder iff running"
            assert task.attempt >= (1 if running else 0), f"{task_id}: running without attempt"
        assert counts == self._counts, "the counts per state drifted"
