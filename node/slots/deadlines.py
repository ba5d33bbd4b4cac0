"""TaskDeadlines: when the running tasks of the slot threads pass their task timeout.

Pure code: the socket thread owns the clock and asks, on every loop turn, whether the
earliest deadline has come (`next_due`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container

from broker.protocol import Run


class TaskDeadlines:
    """Running tasks that have a task timeout, earliest deadline first.

    Only tasks with a task timeout are added, so tasks without one cost nothing here. A task
    that finished is not removed: its entry is skipped when its deadline comes (it is no
    longer running, or a later RUN of the same task id replaced it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Run]] = []
        self._latest: dict[str, int] = {}  # task id -> sequence number of its latest RUN
        self._sequence = 0
        self.next_due = math.inf  # the earliest deadline, read on every loop turn

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, run: Run, now: float) -> None:
        """Start the clock of `run`, which has a task timeout, at `now`."""
        assert run.task_timeout is not None
        self._sequence += 1
        self._latest[run.task_id] = self._sequence
        heapq.heappush(self._heap, (now + run.task_timeout, self._sequence, run))
        self.next_due = self._heap[0][0]

    def expired(self, now: float, running: Container[str]) -> list[Run]:
        """Take the tasks whose deadline has passed and that are still `running`."""
        late = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, sequence, run = heapq.heappop(heap)
            if self._latest.get(run.task_id) != sequence:
                continue
            del self._latest[run.task_id]
            if run.task_id in running:
                late.append(run)
        self.next_due = heap[0][0] if heap else math.inf
        return late
