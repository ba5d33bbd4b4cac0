"""QueueDeadlines: queued tasks that must start by a deadline, earliest first.

A task that started (or was answered) is skipped when its entry surfaces: `_start` clears
`expires_at`, so only a task still waiting for its first start can expire. Pure state.
"""

from __future__ import annotations

import heapq
from itertools import count

from broker.queues import TaskRecord


class QueueDeadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TaskRecord]] = []
        self._seq = count()

    def add(self, record: TaskRecord) -> None:
        assert record.expires_at is not None
        heapq.heappush(self._heap, (record.expires_at, next(self._seq), record))

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].expires_at != self._heap[0][0]:
            heapq.heappop(self._heap)  # started or answered meanwhile
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[TaskRecord]:
        """Tasks whose deadline passed before they started."""
        due = []
        while (when := self.next_due()) is not None and when <= now:
            record = heapq.heappop(self._heap)[2]
            record.expires_at = None
            due.append(record)
        return due
