"""DeadLetters: tasks that failed for good, kept until they are replayed or purged.

A task lands here when its final answer has a non-zero exit code after the broker accepted
it (retries used up, expired in the queue, timed out, its node lost). Refusals that never
entered the queue (unknown function, malformed requests) do not. Pure state: no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from itertools import islice
from typing import Any

from msgspec import Struct

from broker.protocol import ErrorInfo, TaskSpec

DEFAULT_MAX_ENTRIES = 100_000


class DeadLetter(Struct, frozen=True, gc=False):
    """A task that failed for good: its spec as submitted, and how it ended."""

    spec: TaskSpec
    attempts: int
    exit_code: int
    error: ErrorInfo | None
    failed_at: float  # monotonic

    def view(self, wall_offset: float, default_retries: int) -> dict[str, Any]:
        """The entry as DLQ_REPLY shows it (protocol.md 3.13); `failed_at` as Unix time."""
        spec = self.spec
        return {
            "task_id": spec.task_id,
            "function": spec.function,
            "priority": spec.priority,
            "retries": default_retries if spec.retries is None else spec.retries,
            "attempts": self.attempts,
            "exit_code": self.exit_code,
            "error": None if self.error is None else self.error.to_json(),
            "failed_at": round(self.failed_at + wall_offset, 3),
        }


class DeadLetters:
    """In failure order; past `max_entries` the oldest are dropped (the JSON-lines log
    still has them)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, DeadLetter] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def get(self, task_id: str) -> DeadLetter | None:
        return self._entries.get(task_id)

    def add(self, entry: DeadLetter) -> None:
        self._entries.pop(entry.spec.task_id, None)
        self._entries[entry.spec.task_id] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.dropped += 1

    def newest(self, limit: int | None = None) -> list[DeadLetter]:
        """The newest `limit` entries (None: all), newest first."""
        return list(islice(reversed(self._entries.values()), limit))

    def remove(self, task_id: str) -> DeadLetter | None:
        return self._entries.pop(task_id, None)

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._entries.values()))
