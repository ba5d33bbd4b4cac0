"""TaskQueue: tasks waiting for a free slot, by function, highest priority first, FIFO within
a priority. Pure state: no sockets, no clock."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Set
from dataclasses import dataclass, field


@dataclass(eq=False)
class TaskRecord:
    """A task the broker accepted and has not answered yet."""

    task_id: str
    function: str
    payload: bytes
    priority: int
    seq: int  # submission order; kept when the task is requeued, so it keeps its place
    reply_to: list[bytes]
    submitted_at: float
    attempt: int = 0  # attempts started so far
    node: bytes | None = None  # identity of the node running it, None while queued
    retries: int = 0  # extra attempts allowed after failed ones
    retry_due: float | None = None  # when it may run again, while waiting after a failure
    expires_at: float | None = None  # answered Expired if not started by then
    timeout: float | None = None  # seconds one attempt may run
    overdue_at: float | None = None  # while running with a timeout: when the node is overdue


@dataclass
class TaskQueue:
    # function -> heap of (-priority, seq, record); seq is unique so records never compare.
    _heaps: dict[str, list[tuple[int, int, TaskRecord]]] = field(default_factory=dict)
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def push(self, record: TaskRecord) -> None:
        heap = self._heaps.setdefault(record.function, [])
        heapq.heappush(heap, (-record.priority, record.seq, record))
        self._size += 1

    def has(self, function: str) -> bool:
        return function in self._heaps

    def pop_for(self, functions: Set[str]) -> TaskRecord | None:
        """The first task, by priority then age, whose function is in `functions`."""
        best: list[tuple[int, int, TaskRecord]] | None = None
        if len(self._heaps) < len(functions):
            candidates = [h for f, h in self._heaps.items() if f in functions]
        else:
            candidates = [h for f in functions if (h := self._heaps.get(f)) is not None]
        for heap in candidates:
            if best is None or heap[0] < best[0]:
                best = heap
        if best is None:
            return None
        record = heapq.heappop(best)[2]
        if not best:
            del self._heaps[record.function]
        self._size -= 1
        return record

    def remove(self, record: TaskRecord) -> bool:
        """Take a queued task out (rare: a late result for a requeued task). O(queue)."""
        heap = self._heaps.get(record.function)
        if heap is None:
            return False
        kept = [entry for entry in heap if entry[2] is not record]
        if len(kept) == len(heap):
            return False
        self._size -= 1
        if kept:
            heapq.heapify(kept)
            self._heaps[record.function] = kept
        else:
            del self._heaps[record.function]
        return True

    def __iter__(self) -> Iterator[TaskRecord]:
        for heap in self._heaps.values():
            for entry in heap:
                yield entry[2]

    def counts(self) -> dict[str, int]:
        return {function: len(heap) for function, heap in self._heaps.items()}

    def check_invariants(self) -> None:
        assert self._size == sum(len(h) for h in self._heaps.values()), "size drifted"
        for function, heap in self._heaps.items():
            assert heap, f"empty heap kept for {function}"
            for _, _, record in heap:
                assert record.function == function
                assert record.node is None, f"queued task {record.task_id} marked running"
