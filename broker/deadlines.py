"""Deadlines: tasks that must do something by a time, earliest first.

`Deadlines("expires_at")` holds queued tasks that must start by their deadline;
`Deadlines("overdue_at")` running tasks whose node must answer by then. The record's attribute
is the truth: when a task starts, finishes or is answered, the scheduler clears (or changes)
that attribute, and an entry whose time no longer matches is skipped when it surfaces.
Pure state.
"""

from __future__ import annotations

import heapq
from itertools import count

from broker.queues import TaskRecord


class Deadlines:
    def __init__(self, attribute: str) -> None:
        self._attribute = attribute
        self._heap: list[tuple[float, int, TaskRecord]] = []
        self._seq = count()

    def add(self, record: TaskRecord) -> None:
        when = getattr(record, self._attribute)
        assert when is not None
        heapq.heappush(self._heap, (when, next(self._seq), record))

    def next_due(self) -> float | None:
        heap, attribute = self._heap, self._attribute
        while heap and getattr(heap[0][2], attribute) != heap[0][0]:
            heapq.heappop(heap)  # started, answered or rescheduled meanwhile
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[TaskRecord]:
        """Tasks whose deadline passed; their attribute is cleared."""
        due = []
        while (when := self.next_due()) is not None and when <= now:
            record = heapq.heappop(self._heap)[2]
            setattr(record, self._attribute, None)
            due.append(record)
        return due
