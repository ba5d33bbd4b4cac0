"""How the scheduler behaves: its settings, with the defaults `zbroker start` uses."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from broker.protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS,
    EXIT_FUNCTION_ERROR,
    EXIT_TIMEOUT,
    EXIT_WORKER_CRASHED,
    RETRY_ON,
    RETRY_ON_EXCEPTION,
    RETRY_ON_TIMEOUT,
)

DEFAULT_MAX_PREFETCH = 64
DEFAULT_MAX_PENDING_PER_CLIENT = 1_000_000
LEAST_LOADED = "least-loaded"
ROUND_ROBIN = "round-robin"
STRATEGIES = (LEAST_LOADED, ROUND_ROBIN)

# Failures worth another attempt (protocol.md 5.1): a crashed node process always (as a lost
# node); the function raising or running out of time only when the task's `retry_on` (or
# the broker's default) names it. Never: arguments or results that cannot work (2, 3),
# refused requests (64, 127), cancellation (130).
ALWAYS_RETRIED = frozenset({EXIT_WORKER_CRASHED})
RETRIED_ON = {EXIT_FUNCTION_ERROR: RETRY_ON_EXCEPTION, EXIT_TIMEOUT: RETRY_ON_TIMEOUT}


def parse_retry_on(text: str) -> tuple[str, ...]:
    """`exception`, `timeout`, `exception,timeout`, `all` or `none` as a sorted tuple of
    RETRY_ON names; ValueError naming the choices for anything else."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    if names == {"all"}:
        return RETRY_ON
    if names <= {"none"}:
        return ()
    unknown = names - set(RETRY_ON)
    if unknown:
        choices = ", ".join([*RETRY_ON, "all", "none"])
        raise ValueError(f"unknown retry-on {', '.join(sorted(unknown))}; choose from {choices}")
    return tuple(sorted(names))


@dataclass(frozen=True)
class RetryPolicy:
    """A task gets 1 + `retries` attempts. After a failed attempt the next one waits
    `base * 2**(attempt - 1)` seconds, at most `max_delay`, varied by +-`jitter` so that
    tasks that failed together do not come back together."""

    retries: int = 3  # extra attempts for a task that does not say (EXECUTE "retries")
    base: float = 0.5  # seconds before the second attempt
    max_delay: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        plain = min(self.base * 2.0 ** (attempt - 1), self.max_delay)
        return plain * rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class ResultsConfig:
    """How long, and how many, answers of finished tasks are kept to answer resends."""

    ttl: float = 300.0  # seconds
    max_entries: int = 100_000
    max_bytes: int = 64 * 1024 * 1024  # result payloads, plus a fixed cost per entry


# Node heartbeats a second the broker takes at most, by default (broker.core.heartbeats): at
# some 40 microseconds of its loop per node heartbeat (the one received and the one sent),
# about a tenth of a core, past which the interval grows (4.8 s at 10,000 nodes).
DEFAULT_HEARTBEAT_BUDGET = 2500


@dataclass(frozen=True)
class SchedulerConfig:
    strategy: str = LEAST_LOADED
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL  # seconds; the least, with a budget
    liveness: int = DEFAULT_LIVENESS
    results: ResultsConfig = field(default_factory=ResultsConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    task_timeout: float | None = None  # seconds per attempt, for tasks that do not say
    # How long a function still counts as offered after its last node left (or after a
    # restart from a store): its tasks wait for a node to come back instead of getting 127.
    offer_grace: float | None = None  # None: 2 x heartbeat expiry + 5 s
    journal: bool = False  # emit store commands, for a durable store
    # A grace of one expiry for every function when the broker starts: the nodes of a broker
    # restarted without a store register meanwhile. None: as the shell decides (the broker
    # process gives one; a scheduler alone, as in the core's tests, does not).
    start_grace: bool | None = None
    dead_letters_max: int = 100_000  # dead letters kept; the oldest go first
    # And at most these bytes of them: their arguments, plus a fixed cost per entry.
    dead_letters_max_bytes: int = 64 * 1024 * 1024
    # The most tasks a node may hold unstarted beyond its slots (it asks for its own number
    # in REGISTER `prefetch`); 0 turns prefetching off.
    max_prefetch: int = DEFAULT_MAX_PREFETCH
    # Failures retried (within `retries`) for tasks whose EXECUTE has no `retry_on`, besides
    # crashes and lost nodes: none by default, as Ray's defaults.
    retry_on: tuple[str, ...] = ()
    # Counts, histograms and rates by function and node (broker.core.metrics), in
    # STATUS_REPLY `metrics`; off (`zbroker start --no-metrics`) only to measure their cost.
    metrics: bool = True
    # The most tasks one client (its CURVE key, else one connection) may have pending
    # (accepted, not answered); past it an EXECUTE is refused with ERROR too_many_tasks
    # (protocol.md 8.3). None: no limit.
    max_pending_per_client: int | None = DEFAULT_MAX_PENDING_PER_CLIENT
    # Node heartbeats a second the broker takes at most: past it the interval grows with the
    # node count (broker.core.heartbeats). None: the interval stays as configured.
    heartbeat_budget: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")

    @property
    def expiry(self) -> float:
        """Seconds of silence after which a node is dead."""
        return self.heartbeat_interval * self.liveness

    @property
    def offer_grace_seconds(self) -> float:
        return 2 * self.expiry + 5.0 if self.offer_grace is None else self.offer_grace

    @property
    def overdue_grace(self) -> float:
        """How long past a task's task timeout the broker waits for the node's own RESULT 124
        before it gives up on the node (protocol.md 5.3)."""
        return max(1.0, self.expiry)
