"""TaskQueue: tasks waiting for a free slot, per function, highest priority first; within a
priority, submitters take turns (protocol.md 5.1, fair shares).

Turns are start-time fair queuing: a task gets a tag when it is first queued, one more than
the larger of its submitter's last tag at that priority and the tag of the last task taken
from the queue at that priority. Tasks are taken by tag (then in the order they came), so a
submitter with a million tasks queued and one who sends ten get alternate turns from then
on, and a submitter alone is served first-in first-out. A task queued again keeps its tag,
so it keeps its place; one that ran without waiting (a retry, a task given back) goes to
the front of its priority, where its age puts it. Tasks that start without waiting cost
nothing here, and earn their submitter no debt.

A task leaves the queue either from its top (`pop_for`) or from anywhere (`discard`: it
expired, or was answered by a late result). A discarded entry stays in its heap, marked
dead by the task's `queue_stamp`, until it surfaces; so every operation is O(log n)
amortized, and a heap is rebuilt when its dead entries outnumber its live ones. Pure state.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Set

from broker.core.tasks import Task

Entry = tuple[int, int, int, Task]  # (-priority, tag, stamp, task); the stamp is unique
PRIORITIES = 10  # 0..9
FORGET_TAGS_PAST = 10_000  # submitters remembered before those that no longer matter go


class _Heap:
    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.live = 0

    def top(self) -> Entry | None:
        entries = self.entries
        while entries and entries[0][3].queue_stamp != entries[0][2]:
            heapq.heappop(entries)  # discarded meanwhile
        return entries[0] if entries else None


class TaskQueue:
    def __init__(self) -> None:
        self._heaps: dict[str, _Heap] = {}  # only functions with live entries
        self.size = 0  # tasks queued (read it; only the queue changes it)
        self._by_priority = [0] * PRIORITIES  # tasks queued at each priority
        self._stamp = 0
        self._served = [0] * PRIORITIES  # by priority: the tag of the last task taken
        self._last: dict[tuple[bytes, int], int] = {}  # (submitter, priority) -> last tag
        # Whether a task for a function is queued: the dict's own method (a C call).
        self.has: Callable[[str], bool] = self._heaps.__contains__

    def __len__(self) -> int:
        return self.size

    def _tag(self, task: Task, again: bool) -> int:
        """A task's turn among its priority's submitters, when it is first queued."""
        priority = task.spec.priority
        served = self._served[priority]
        if again:  # it was sent to a node before: the front of the line
            return served - 1
        key = (task.requesters[0] if task.requesters else b"", priority)
        tags = self._last
        last = tags.get(key)
        if last is None:
            tag = served + 1
            if len(tags) >= FORGET_TAGS_PAST:  # forget those that no longer matter
                served_by = self._served
                self._last = tags = {k: t for k, t in tags.items() if t > served_by[k[1]]}
        else:
            tag = (last if last > served else served) + 1
        tags[key] = tag
        return tag

    def push(self, task: Task, again: bool = False) -> None:
        """Queue `task`; `again`: it was sent to a node before (a retry, a task given back)."""
        heap = self._heaps.get(task.spec.function)
        if heap is None:
            heap = self._heaps[task.spec.function] = _Heap()
        self._stamp += 1
        task.queue_stamp = self._stamp
        tag = task.fair_tag
        if tag is None:
            tag = task.fair_tag = self._tag(task, again)
        heapq.heappush(heap.entries, (-task.spec.priority, tag, self._stamp, task))
        heap.live += 1
        self.size += 1
        self._by_priority[task.spec.priority] += 1

    def pop_for(self, functions: Set[str]) -> Task | None:
        """The first task, by priority then turn, whose function is in `functions`."""
        best: Entry | None = None
        if len(self._heaps) < len(functions):
            candidates = [h for f, h in self._heaps.items() if f in functions]
        else:
            candidates = [h for f in functions if (h := self._heaps.get(f)) is not None]
        for heap in candidates:
            entry = heap.top()
            if entry is not None and (best is None or entry < best):
                best = entry
        if best is None:
            return None
        task = best[3]
        heap = self._heaps[task.spec.function]
        heapq.heappop(heap.entries)  # `best` is its top
        self._taken(task, heap)
        served = self._served
        if best[1] > served[-best[0]]:  # its priority's turn moves on
            served[-best[0]] = best[1]
        return task

    def discard(self, task: Task) -> None:
        """Take a queued task out, wherever it is."""
        heap = self._heaps[task.spec.function]
        self._taken(task, heap)
        if len(heap.entries) > 32 and len(heap.entries) > 2 * heap.live:
            heap.entries = [e for e in heap.entries if e[3].queue_stamp == e[2]]
            heapq.heapify(heap.entries)

    def _taken(self, task: Task, heap: _Heap) -> None:
        task.queue_stamp = 0
        heap.live -= 1
        self.size -= 1
        self._by_priority[task.spec.priority] -= 1
        if not heap.live:
            del self._heaps[task.spec.function]

    def __iter__(self) -> Iterator[Task]:
        """The queued tasks, in no particular order."""
        for heap in self._heaps.values():
            for entry in heap.entries:
                if entry[3].queue_stamp == entry[2]:
                    yield entry[3]

    def waiting_for(self, functions: Set[str]) -> int:
        """Tasks queued for any of `functions`: O(the fewer of `functions` and the functions
        with queued tasks), no task looked at."""
        heaps = self._heaps
        if not heaps:
            return 0
        if len(heaps) < len(functions):
            return sum(heap.live for function, heap in heaps.items() if function in functions)
        return sum(heap.live for function in functions if (heap := heaps.get(function)))

    def counts(self) -> dict[str, int]:
        """Queued tasks per function."""
        return {function: heap.live for function, heap in self._heaps.items()}

    def counts_by_priority(self) -> dict[str, int]:
        """Queued tasks per priority that has any (keys are the priorities, as text)."""
        return {str(priority): n for priority, n in enumerate(self._by_priority) if n}

    def check_invariants(self) -> None:
        by_priority = [0] * PRIORITIES
        for task in self:
            by_priority[task.spec.priority] += 1
        assert by_priority == self._by_priority, "counts by priority drifted"
        total = 0
        for function, heap in self._heaps.items():
            live = [e[3] for e in heap.entries if e[3].queue_stamp == e[2]]
            assert len(live) == heap.live > 0, f"live count of {function} drifted"
            assert all(t.spec.function == function for t in live), f"{function}: stray task"
            total += heap.live
        assert total == self.size, "size drifted"
