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
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Bytes an entry costs besides its arguments: its record and its spec (with a 32-character
# id), as tracemalloc measures them: about 200 and 300.
ENTRY_OVERHEAD = 500


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
    """In failure order; past `max_entries`, or `max_bytes` of arguments and entries, the
    oldest are dropped (the JSON-lines log still has them). Bounded in bytes too: a stream
    of failing tasks with large arguments must not grow the broker without end."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, DeadLetter] = OrderedDict()
        self.bytes = 0  # argument bytes held, plus ENTRY_OVERHEAD per entry
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def get(self, task_id: str) -> DeadLetter | None:
        return self._entries.get(task_id)

    def add(self, entry: DeadLetter) -> None:
        self.remove(entry.spec.task_id)
        self._entries[entry.spec.task_id] = entry
        self.bytes += _cost(entry)
        entries = self._entries
        while len(entries) > 1 and (len(entries) > self.max_entries or self.bytes > self.max_bytes):
            _, oldest = entries.popitem(last=False)
            self.bytes -= _cost(oldest)
            self.dropped += 1

    def newest(self, limit: int | None = None) -> list[DeadLetter]:
        """The newest `limit` entries (None: all), newest first."""
        return list(islice(reversed(self._entries.values()), limit))

    def remove(self, task_id: str) -> DeadLetter | None:
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            self.bytes -= _cost(entry)
        return entry

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return count

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._entries.values()))

    def check_invariants(self) -> None:
        assert self.bytes == sum(map(_cost, self._entries.values())), "bytes drifted"
        assert len(self._entries) <= max(1, self.max_entries), "over its count"


def _cost(entry: DeadLetter) -> int:
    return len(entry.spec.args) + ENTRY_OVERHEAD
