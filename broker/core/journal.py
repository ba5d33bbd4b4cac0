"""The journal: what a durable store must do to keep up with the scheduler.

With `SchedulerConfig.journal`, the scheduler returns these commands beside its `Send`s; the
server hands them to the store (broker.store), which applies a batch of them in one
transaction. Times are the scheduler's monotonic `now`; the store turns them into Unix time.
Each record carries the task's spec whole, so a new task option changes nothing here. The
records are tagged (MessagePack arrays led by their class name), so that a batch of them
crosses to the store's writer process as one msgspec message (broker.store.writer).
"""

from __future__ import annotations

from typing import TypeAlias

from msgspec import Struct

from broker.core.deadletters import DeadLetter
from broker.protocol import TaskCompleted, TaskSpec


class SaveTask(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """Keep an accepted task pending. A task id is accepted again only after it was
    answered (a replayed dead letter), so no pending row exists for it."""

    spec: TaskSpec
    seq: int  # submission order, so a restored queue keeps its order
    submitted_at: float


class SaveAttempts(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """A pending task has been given `attempts` attempts: a RUN of attempt `attempts` went
    to a node (which may still run it when a restarted broker reads this back), or one was
    given back unstarted and the count went down again."""

    task_id: str
    attempts: int


class SaveAnswer(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """The task was answered: it is no longer pending, and its answer is kept."""

    answer: TaskCompleted
    at: float


class ForgetAnswer(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """Drop a kept answer (a replayed task will have a new one)."""

    task_id: str


class SaveDeadLetter(Struct, frozen=True, gc=False, tag=True, array_like=True):
    entry: DeadLetter


class ForgetDeadLetter(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """Replayed or purged; `task_id` None: every dead letter."""

    task_id: str | None


class SaveNode(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """A node process registered: a restarted broker waits for it to claim its attempts
    (protocol.md 7.3) before it places again the tasks it may be running."""

    name: str
    host: str
    pid: int


class ForgetNode(Struct, frozen=True, gc=False, tag=True, array_like=True):
    """A node process has no registration left (it stopped, died or was forgotten)."""

    name: str
    host: str
    pid: int


Change: TypeAlias = (
    SaveTask
    | SaveAttempts
    | SaveAnswer
    | ForgetAnswer
    | SaveDeadLetter
    | ForgetDeadLetter
    | SaveNode
    | ForgetNode
)
CHANGES = (
    SaveTask,
    SaveAttempts,
    SaveAnswer,
    ForgetAnswer,
    SaveDeadLetter,
    ForgetDeadLetter,
    SaveNode,
    ForgetNode,
)


class PendingTask(Struct, frozen=True, gc=False):
    """A pending task as a store gives it back: what SaveTask and SaveAttempts kept."""

    spec: TaskSpec
    seq: int
    submitted_at: float
    attempts: int = 0  # attempts given out so far (see SaveAttempts)
