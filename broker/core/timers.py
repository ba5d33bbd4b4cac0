"""Timers: the one heap of everything the core must do at a time of its own.

A queued task's queue deadline, a failed task's next attempt, a running task's overdue
check, a node's heartbeat and liveness check, the end of a grace: each is a timer on a
subject (a task, a node, a grace). A subject has at most one live timer, whose number it
keeps in its `timer` attribute (0: none); scheduling another replaces it. Replaced and
cancelled entries stay in the heap until they surface and are skipped, so every operation
is O(log n) amortized; the heap is rebuilt when dead entries outnumber live ones, so it
stays within a constant factor of the live timers.
"""

from __future__ import annotations

import heapq
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    timer: int  # the number of its live timer; 0: none


S = TypeVar("S", bound=Timed)


class Timers(Generic[S]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, S]] = []
        self._next = 1  # timer numbers; 0 means "no timer"
        self._dead = 0  # entries in the heap that were replaced or cancelled

    def schedule(self, subject: S, due: float) -> None:
        """`subject`'s timer, at `due` (replaces the one it had)."""
        if subject.timer:
            self._dead += 1
        number = self._next
        self._next = number + 1
        subject.timer = number
        heap = self._heap
        heapq.heappush(heap, (due, number, subject))
        if self._dead > 32 and 2 * self._dead > len(heap):
            self._compact()

    def cancel(self, subject: S) -> None:
        """`subject` has no timer any more."""
        if subject.timer:
            self._dead += 1
            subject.timer = 0

    def next_due(self) -> float | None:
        """When the earliest live timer is due; None when there is none."""
        heap = self._heap
        while heap and heap[0][2].timer != heap[0][1]:
            heapq.heappop(heap)  # replaced or cancelled meanwhile
            self._dead -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> S | None:
        """The subject of the earliest timer if it is due by `now` (its timer is gone then),
        else None. One at a time: handling one may cancel or replace the next ones."""
        when = self.next_due()
        if when is None or when > now:
            return None
        subject = heapq.heappop(self._heap)[2]
        subject.timer = 0
        return subject

    def __len__(self) -> int:
        """Live timers."""
        return len(self._heap) - self._dead

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].timer == entry[1]]
        heapq.heapify(self._heap)
        self._dead = 0

    def check_invariants(self) -> None:
        live = [number for _, number, subject in self._heap if subject.timer == number]
        assert len(live) == len(set(live)), "a timer is in the heap twice"
        assert len(live) == len(self), "the count of dead timers drifted"
