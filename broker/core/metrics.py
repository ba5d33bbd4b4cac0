"""Metrics: what the broker measures of its tasks and nodes, for STATUS_REPLY `metrics`
(protocol.md 3.11) and, through `zbroker monitor`, Prometheus and the dashboard.

Everything here costs O(1) per task: a few integer additions and, per histogram, one
`bisect` over a fixed tuple of bucket bounds (C code). Rates come from totals sampled once a
second in a ring that spans a minute, so a STATUS never walks the tasks. Per function:

- counts of tasks accepted, attempts started, failed attempts retried, tasks dead-lettered,
  and answers by outcome (succeeded, failed, timed out, expired, cancelled);
- histograms of queue wait (acceptance to the start of the first attempt), run time (start
  to RESULT, per attempt) and end-to-end time (acceptance to answer).

Pure: no clock (`now` comes in), no sockets.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING, Any

from broker.protocol import EXIT_CANCELLED, EXIT_EXPIRED, EXIT_TIMEOUT, TaskCompleted

if TYPE_CHECKING:
    from broker.core.tasks import Task

# Upper bounds, in seconds, of the histograms' buckets (Prometheus `le`); one more bucket
# counts what lies above the last. From half a millisecond (a task on loopback) to five
# minutes, about three per decade, as Prometheus' own defaults.
BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
OUTCOMES = ("succeeded", "failed", "timed_out", "expired", "cancelled")
_OUTCOME_OF = {0: 0, EXIT_TIMEOUT: 2, EXIT_EXPIRED: 3, EXIT_CANCELLED: 4}  # else 1: failed
SAMPLE_EVERY = 1.0  # seconds between samples of the totals
SPAN = 60.0  # seconds the samples reach back
NODE_SAMPLE_EVERY = 10.0  # a node's busy time is sampled less often: it is kept per node
RECENT_FAILURES = 20  # the last failed answers, shown as they are


class Histogram:
    """Counts per bucket of BOUNDS (not cumulative) and the sum of what was observed."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds

    def view(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": round(self.sum, 6)}


class FunctionMetrics:
    """What happened to one function's tasks since the broker started."""

    __slots__ = (
        "accepted",
        "dead_lettered",
        "end_to_end",
        "outcomes",
        "queue_wait",
        "retried",
        "run_time",
        "started",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.started = 0  # attempts
        self.retried = 0  # failed attempts followed by another
        self.dead_lettered = 0
        self.outcomes = [0] * len(OUTCOMES)  # answers, by OUTCOMES
        self.queue_wait = Histogram()
        self.run_time = Histogram()
        self.end_to_end = Histogram()

    def view(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "started": self.started,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            **dict(zip(OUTCOMES, self.outcomes, strict=True)),
            "queue_wait": self.queue_wait.view(),
            "run_time": self.run_time.view(),
            "end_to_end": self.end_to_end.view(),
        }


class Window:
    """Samples (time, total) of a growing total, at least `every` seconds apart and spanning a
    little more than `span`: the total's rate over the last `seconds` (at most `span`).

    The owner samples lazily, before it adds to the total, whenever `due`: so between two
    samples more than `every` apart, the total grew only in the first `every` seconds. The
    total at any past time follows (interpolated within those seconds), however sparse the
    samples of an idle stretch."""

    __slots__ = ("every", "samples", "span")

    def __init__(self, now: float, every: float = SAMPLE_EVERY, span: float = SPAN) -> None:
        self.every = every
        self.span = span
        self.samples: deque[tuple[float, float]] = deque([(now, 0.0)])

    def due(self, now: float) -> bool:
        return now - self.samples[-1][0] >= self.every

    def sample(self, now: float, total: float) -> None:
        samples = self.samples
        samples.append((now, total))
        while len(samples) > 2 and samples[1][0] <= now - self.span:
            samples.popleft()  # the next one reaches back far enough

    def rate(self, now: float, total: float, seconds: float) -> float:
        """Per second over the last `seconds` (or since the first sample, if later)."""
        start = now - seconds
        samples = self.samples
        first_time = samples[0][0]
        if start <= first_time:
            elapsed = now - first_time
            return (total - samples[0][1]) / elapsed if elapsed > 0 else 0.0
        after_time, after = now, total  # the first sample after `start`, else now
        before_time, before = samples[-1]
        for when, value in reversed(samples):
            if when <= start:
                before_time, before = when, value
                break
            after_time, after = when, value
        into = start - before_time
        if into >= self.every or after_time <= before_time:
            base = after  # it grew only in the first `every` seconds after `before_time`
        else:
            base = before + (after - before) * into / min(self.every, after_time - before_time)
        return max(0.0, (total - base) / seconds)


class Metrics:
    """The broker's measurements; the scheduler calls these on each task's way."""

    def __init__(self, now: float) -> None:
        self.started_at = now
        self.functions: dict[str, FunctionMetrics] = {}
        self.answered = 0  # answers of every outcome
        self._throughput = Window(now)
        self._next_sample = now + SAMPLE_EVERY
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=RECENT_FAILURES)

    def of(self, function: str) -> FunctionMetrics:
        found = self.functions.get(function)
        if found is None:
            found = self.functions[function] = FunctionMetrics()
        return found

    def answer(self, fm: FunctionMetrics, task: Task, reply: TaskCompleted, now: float) -> None:
        """`task` answered `reply`: its outcome, its end-to-end time, a failure's details."""
        if now >= self._next_sample:  # before the total grows (see Window)
            self._throughput.sample(now, self.answered)
            self._next_sample = now + SAMPLE_EVERY
        self.answered += 1
        exit_code = reply.exit_code
        took = now - task.submitted_at
        end_to_end = fm.end_to_end  # `Histogram.observe`, without its call
        end_to_end.counts[bisect_left(BOUNDS, took)] += 1
        end_to_end.sum += took
        if exit_code == 0:
            fm.outcomes[0] += 1
            return
        outcome = _OUTCOME_OF.get(exit_code, 1)
        fm.outcomes[outcome] += 1
        if outcome != 4:  # a failure, not a cancellation
            error = reply.error
            self.recent_failures.append(
                {
                    "task_id": reply.task_id,
                    "function": task.spec.function,
                    "exit_code": exit_code,
                    "error": None if error is None else f"{error.type}: {error.message}"[:300],
                    "attempts": reply.attempts,
                    "at": now,
                }
            )

    def view(self, now: float, wall_offset: float) -> dict[str, Any]:
        answered = self.answered
        return {
            "uptime": round(now - self.started_at, 3),
            "histogram_bounds": list(BOUNDS),
            "throughput_last_second": round(self._throughput.rate(now, answered, 1.0), 3),
            "throughput_last_minute": round(self._throughput.rate(now, answered, SPAN), 3),
            "functions": {name: m.view() for name, m in sorted(self.functions.items())},
            "recent_failures": [
                {**failure, "at": round(failure["at"] + wall_offset, 3)}
                for failure in reversed(self.recent_failures)
            ],
        }


class NodeBusy:
    """A node's busy time (slot-seconds spent running tasks), sampled every
    NODE_SAMPLE_EVERY seconds: its utilisation over the last minute."""

    __slots__ = ("done", "window")

    def __init__(self, now: float) -> None:
        self.done = 0.0  # slot-seconds of the attempts it has answered
        self.window = Window(now, NODE_SAMPLE_EVERY, SPAN)

    def utilisation(self, now: float, busy: float, slots: int) -> float:
        """The share of its slots' time spent running over the last minute (0..1)."""
        if slots <= 0:
            return 0.0
        return max(0.0, min(1.0, self.window.rate(now, busy, SPAN) / slots))
