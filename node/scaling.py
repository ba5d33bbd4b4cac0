"""When an elastic `znode` (`--min N --max M`) starts or stops node processes.

The decisions alone, pure: no processes, no clock (`now` comes in), so that they are tested
as a sequence of facts. The supervisor (node/supervisor.py) tells the Scaler what happens (a
process started, what it reported on its demand pipe, it was stopped) and asks `decide(now)`
what to do, then acts and logs.

The rules:

- **Up.** Work waits: the broker's backlog hint (protocol.md 3.4) counts the tasks queued
  for the functions these processes offer (every process offers the same functions, so they
  all get the same hint, and the one that changed last is the latest word), and when every
  registered process is full, the tasks they hold beyond their slots (a prefetch window)
  wait too. While any work waits, start one more process, at most one per UP_EVERY seconds,
  up to `maximum`, and no more than the waiting work can keep busy: a process takes
  `threads` tasks, and one started but not registered yet counts as taking its share.
- **Down.** A process is idle from the report in which it runs and holds nothing, has no
  backlog and has sent no RESULT since its previous report (or from its start). One idle
  for `scale_down_after` seconds is stopped, the highest-numbered first, never going below
  `minimum`, and never while work waits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.supervision import Demand

UP_EVERY = 0.5  # seconds: the least time between two processes started for the backlog
DEFAULT_SCALE_DOWN_AFTER = 30.0  # seconds


@dataclass(frozen=True)
class Scaling:
    """How far an elastic znode may scale (the options `--min`, `--max`,
    `--scale-down-after`)."""

    minimum: int
    maximum: int
    scale_down_after: float = DEFAULT_SCALE_DOWN_AFTER

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if not self.scale_down_after > 0:
            raise ValueError(f"scale_down_after must be positive, got {self.scale_down_after}")


@dataclass(frozen=True)
class ScaleUp:
    """Start one process; there will be `processes`. What waits: the latest `backlog` hint
    (None: unknown) and the tasks `held` beyond their slots by processes that are all full."""

    processes: int
    backlog: int | None
    held: int = 0


@dataclass(frozen=True)
class ScaleDown:
    """Stop process `index`, idle for `idle` seconds; `processes` will be left."""

    index: int
    processes: int
    idle: float


Decision = ScaleUp | ScaleDown


@dataclass
class _Process:
    started: float
    demand: Demand | None = None  # its latest report
    idle_since: float | None = None  # None: working
    hint_at: float = -math.inf  # when its backlog hint last changed


class Scaler:
    def __init__(self, scaling: Scaling, threads: int) -> None:
        self.scaling = scaling
        self._threads = threads  # tasks one process takes at once
        self._processes: dict[int, _Process] = {}
        self._last_up = -math.inf

    @property
    def count(self) -> int:
        """The processes counted: started (or waiting to be restarted) and not stopped."""
        return len(self._processes)

    def started(self, index: int, now: float) -> None:
        """Process `index` started (anew, after a crash, or to scale up)."""
        self._processes[index] = _Process(started=now, idle_since=now)

    def gone(self, index: int) -> None:
        """Process `index` is no longer counted: it was asked to stop."""
        self._processes.pop(index, None)

    def reported(self, index: int, demand: Demand, now: float) -> None:
        process = self._processes.get(index)
        if process is None:
            return  # a process being stopped: its word no longer counts
        previous = process.demand
        if demand.busy or demand.backlog:
            process.idle_since = None
        elif process.idle_since is None or (
            previous is not None and demand.results != previous.results
        ):
            process.idle_since = now  # idle from now on
        known = demand.backlog is not None
        if known and (previous is None or previous.backlog != demand.backlog):
            process.hint_at = now
        process.demand = demand

    def backlog(self) -> int | None:
        """The latest backlog hint any process got; None if none has one."""
        latest = None
        for process in self._processes.values():
            demand = process.demand
            if demand is None or demand.backlog is None:
                continue
            if latest is None or process.hint_at > latest.hint_at:
                latest = process
        return None if latest is None or latest.demand is None else latest.demand.backlog

    def decide(self, now: float) -> list[Decision]:
        """What to do now: at most one ScaleUp, or any ScaleDowns due."""
        up = self._wanted_up(now)
        if up is not None:
            if now < self._last_up + UP_EVERY:
                return []
            self._last_up = now
            return [up]
        if self.backlog() or self._held()[0]:
            return []  # work waits: whatever is idle will have some
        room = self.count - self.scaling.minimum
        downs: list[Decision] = []
        for index, idle in self._idle(now):
            if len(downs) >= room:
                break
            if idle >= self.scaling.scale_down_after:
                downs.append(ScaleDown(index, self.count - len(downs) - 1, idle))
        for decision in downs:
            assert isinstance(decision, ScaleDown)
            self.gone(decision.index)
        return downs

    def next_deadline(self, now: float) -> float:
        """When `decide` may have something to do next, unless a report comes first."""
        if self._wanted_up(now) is not None:
            return max(now, self._last_up + UP_EVERY)
        if self.backlog() or self._held()[0] or self.count <= self.scaling.minimum:
            return math.inf
        after = self.scaling.scale_down_after
        return min((now - idle + after for _, idle in self._idle(now)), default=math.inf)

    def _wanted_up(self, now: float) -> ScaleUp | None:
        """The ScaleUp the demand asks for, pacing aside; None if it asks for none."""
        count = self.count
        if count >= self.scaling.maximum:
            return None
        backlog = self.backlog()
        held, full = self._held()
        waiting = (backlog or 0) + (held if full else 0)
        if not waiting:
            return None
        starting = sum(1 for p in self._processes.values() if not _registered(p))
        if math.ceil(waiting / self._threads) <= starting:
            return None
        return ScaleUp(count + 1, backlog, held if full else 0)

    def _held(self) -> tuple[int, bool]:
        """The tasks the registered processes hold beyond their slots, and whether each of
        them is full (no slot free to run one more)."""
        held, full = 0, True
        for process in self._processes.values():
            demand = process.demand
            if demand is None or not demand.registered:
                continue
            held += max(0, demand.busy - self._threads)
            full = full and demand.busy >= self._threads
        return held, full

    def _idle(self, now: float) -> list[tuple[int, float]]:
        """(index, seconds idle) of the idle processes, highest index first."""
        idle = [
            (index, now - process.idle_since)
            for index, process in self._processes.items()
            if process.idle_since is not None
        ]
        return sorted(idle, reverse=True)


def _registered(process: _Process) -> bool:
    return process.demand is not None and process.demand.registered
