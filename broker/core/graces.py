"""Graces: functions that count as offered for a while although no node offers them.

After the last node offering a function leaves (a node process being replaced, say), its
tasks are accepted for a grace and wait for a node to come back, instead of getting 127 at
once; after a broker restarts from a store, every function gets one, since its nodes have not
registered again yet, and a broker that starts gives every function one heartbeat expiry (a
restart without a store looks like a first start, and live nodes come back within it). A
task accepted only thanks to a grace is `held` by it: when the grace ends, the scheduler
refuses the held tasks that still have no node. Each grace ends by its own timer. Pure
state: time comes in as `now`.
"""

from __future__ import annotations

from typing import Protocol

from broker.core.tasks import Task


class Grace:
    """A grace for one function, or for every function (`function` None: a restart)."""

    __slots__ = ("function", "held", "timer", "until")

    def __init__(self, function: str | None) -> None:
        self.function = function
        self.until = 0.0
        self.held: list[Task] = []  # tasks accepted only thanks to it
        self.timer = 0  # see broker.core.timers


class GraceTimers(Protocol):
    """The scheduler's timers (broker.core.timers.Timers), as graces use them."""

    def schedule(self, subject: Grace, due: float) -> None: ...


class Graces:
    def __init__(self, timers: GraceTimers, seconds: float) -> None:
        self._timers = timers
        self._seconds = seconds
        self._by_function: dict[str, Grace] = {}
        self._restart: Grace | None = None

    def covering(self, function: str, now: float) -> Grace | None:
        """The grace under which `function` counts as offered now, if any."""
        for grace in (self._by_function.get(function), self._restart):
            if grace is not None and grace.until > now:
                return grace
        return None

    def after_last_node(self, function: str, now: float) -> None:
        """The last node offering `function` stopped taking work: a grace starts (or starts
        again)."""
        grace = self._by_function.get(function)
        if grace is None:
            grace = self._by_function[function] = Grace(function)
        self._extend(grace, now)

    def after_restart(self, now: float, seconds: float | None = None) -> None:
        """The broker (re)started: every function gets a grace, of `seconds` (None: the
        usual length)."""
        self._restart = Grace(None)
        self._extend(self._restart, now, seconds)

    def _extend(self, grace: Grace, now: float, seconds: float | None = None) -> None:
        grace.until = now + (self._seconds if seconds is None else seconds)
        self._timers.schedule(grace, grace.until)

    def ending(self, grace: Grace, now: float, budget: int) -> list[Task]:
        """`grace`'s timer fired: it no longer covers anything. At most `budget` of the tasks
        it held, for the scheduler to look at; if more remain, its timer comes back at once
        for them."""
        if grace.function is None:
            if self._restart is grace:
                self._restart = None
        elif self._by_function.get(grace.function) is grace:
            del self._by_function[grace.function]
        held, grace.held = grace.held[:budget], grace.held[budget:]
        if grace.held:
            self._timers.schedule(grace, now)
        return held
