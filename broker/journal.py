"""What the scheduler changed that a durable store must keep: the journal of changes.

The scheduler appends these (when its config asks for a journal) and the server hands them
to `broker.store.Store.apply` once per pass of its loop, in one transaction. Times are the
scheduler's monotonic `now`; the store turns them into wall-clock time. Pure data.
"""

from __future__ import annotations

from typing import TypeAlias

from broker.deadletters import DeadLetter
from broker.messages import frozen
from broker.protocol import TaskCompleted


@frozen
class StoredTask:
    """An accepted, unanswered task as the store keeps it (and gives back at start-up)."""

    task_id: str
    function: str
    payload: bytes
    priority: int
    seq: int  # submission order, so a restored queue keeps its order
    retries: int
    timeout: float | None  # seconds per attempt, None: no limit
    attempts: int  # attempts that ended in a failure so far
    submitted_at: float  # monotonic
    expires_at: float | None  # monotonic queue deadline, None: none


@frozen
class Accepted:
    """A task was accepted. Its id is not pending: a task id is accepted again only after
    it was answered (a replayed dead letter), so the store holds no row for it."""

    task: StoredTask


@frozen
class Attempted:
    """An attempt failed and the task will run again: it has used `attempts` so far."""

    task_id: str
    attempts: int


@frozen
class Finished:
    """The task was answered: it is no longer pending, and its answer is kept for resends."""

    answer: TaskCompleted
    at: float  # monotonic


@frozen
class DeadLettered:
    entry: DeadLetter


@frozen
class DeadLetterRemoved:
    """Replayed or purged: `task_id` None means every dead letter."""

    task_id: str | None


@frozen
class ResultForgotten:
    """A kept answer was dropped (a replay runs the task again under its id)."""

    task_id: str


Change: TypeAlias = (
    Accepted | Attempted | Finished | DeadLettered | DeadLetterRemoved | ResultForgotten
)
