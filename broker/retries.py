"""Retries: when a failed attempt may run again, and after how long.

A task gets 1 + `retries` attempts. After a function raised (or its node died under it), the
next attempt waits `base * 2**(attempt - 1)` seconds, at most `max_delay`, varied by
+-`jitter` so that tasks that failed together do not come back together. Pure state: time
comes in as `now`, randomness from an injected `random.Random`.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from itertools import count

from broker import protocol as p
from broker.queues import TaskRecord

# Worth another attempt: the function raised, its process died, it ran out of time.
# Not: arguments or results that cannot work (2, 3), refused requests (64, 127).
RETRYABLE = frozenset({p.EXIT_FUNCTION_ERROR, p.EXIT_WORKER_CRASHED, p.EXIT_TIMEOUT})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # extra attempts for a task that does not say (EXECUTE "retries")
    base: float = 0.5  # seconds before the second attempt
    max_delay: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        plain = min(self.base * 2.0 ** (attempt - 1), self.max_delay)
        return plain * rng.uniform(1 - self.jitter, 1 + self.jitter)


class RetryTimers:
    """Tasks waiting for their next attempt, earliest first (stale entries are skipped)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TaskRecord]] = []
        self._seq = count()

    def __len__(self) -> int:
        return sum(1 for due, _, record in self._heap if record.retry_due == due)

    def add(self, record: TaskRecord, due: float) -> None:
        record.retry_due = due
        heapq.heappush(self._heap, (due, next(self._seq), record))

    def next_due(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[TaskRecord]:
        """Records whose wait is over, earliest first; they are no longer waiting."""
        due_now = []
        while self.next_due() is not None and self._heap[0][0] <= now:
            _, _, record = heapq.heappop(self._heap)
            record.retry_due = None
            due_now.append(record)
        return due_now

    def _drop_stale(self) -> None:
        # A record answered (or restarted) meanwhile no longer has this due time.
        while self._heap and self._heap[0][2].retry_due != self._heap[0][0]:
            heapq.heappop(self._heap)
