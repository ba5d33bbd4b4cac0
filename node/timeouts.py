"""Execution timeouts (RUN `timeout_ms`) as the node sees them.

A Python thread cannot be stopped from outside, so a task that outlives its timeout is
answered RESULT exit 124 at its deadline and the node process then exits for its supervisor
to start a fresh one (node/restart.py). Pure code: the agent owns the clock and the socket.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container

from broker.protocol import EXIT_TIMEOUT, ErrorInfo, Result, Run


def seconds(value: float) -> str:
    """1.0 -> "1", 0.3 -> "0.3", as people write timeouts."""
    return f"{value:g}"


def timeout_result(run: Run) -> Result:
    """The RESULT for a task stopped at its deadline."""
    assert run.timeout is not None
    message = (
        f"{run.function}() exceeded its timeout of {seconds(run.timeout)} s "
        f"(attempt {run.attempt}); the node process was restarted to stop it"
    )
    return Result(run.task_id, EXIT_TIMEOUT, b"null", ErrorInfo("Timeout", message))


def restart_reason(run: Run) -> str:
    """Why the process restarts, as its successor's REGISTER `replaces.reason` says."""
    assert run.timeout is not None
    return f"stopped after task {run.task_id} exceeded its {seconds(run.timeout)} s timeout"


class Deadlines:
    """Timed tasks running in slot threads, earliest deadline first.

    Only tasks with a timeout are added, so tasks without one cost nothing here. A task that
    finished is not removed: its entry is skipped when its deadline comes (it is no longer
    running, or a later RUN of the same task id replaced it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Run]] = []
        self._latest: dict[str, int] = {}  # task id -> sequence number of its latest RUN
        self._sequence = 0
        self.next_due = math.inf  # the earliest deadline, read on every loop turn

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, run: Run, now: float) -> None:
        assert run.timeout is not None
        self._sequence += 1
        self._latest[run.task_id] = self._sequence
        heapq.heappush(self._heap, (now + run.timeout, self._sequence, run))
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
