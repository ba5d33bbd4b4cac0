"""Task options and argument checks shared by the clients: a bad value fails here, with a
ValueError that says what is allowed, before anything is sent (the broker would only answer
ERROR malformed)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from broker.protocol import (
    MAX_NAME_LENGTH,
    MAX_RETRIES,
    MAX_TIMEOUT_MS,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Execute,
    execute_frames,
)

MAX_TASK_TIMEOUT = MAX_TIMEOUT_MS / 1000  # seconds: 7 days
MAX_LIMIT = 1_000_000  # entries a DLQ list may ask for (protocol.md 3.12)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be a string of 1 to {MAX_NAME_LENGTH} characters")
    return value


def check_timeout(timeout: float | None) -> float | None:
    """How long a call waits for the broker's answer."""
    if timeout is not None and not (_is_number(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return timeout


def check_retries(retries: int | None) -> int | None:
    if retries is not None and (type(retries) is not int or not 0 <= retries <= MAX_RETRIES):
        raise ValueError(
            f"retries must be an integer from 0 to {MAX_RETRIES} (or None for the broker's "
            f"default), got {retries!r}"
        )
    return retries


def check_queue_timeout(seconds: float | None) -> float | None:
    if seconds is not None and not (_is_number(seconds) and 0.001 <= seconds <= 86_400):
        raise ValueError(f"queue_timeout must be 0.001 to 86400 seconds or None, got {seconds!r}")
    return seconds


def check_task_timeout(seconds: float | None) -> float | None:
    """How long one attempt may run on its node (EXECUTE `timeout_ms`); not a client wait."""
    # 0.001: the wire carries whole milliseconds, and 0 ms is refused as malformed.
    if seconds is not None and not (_is_number(seconds) and 0.001 <= seconds <= MAX_TASK_TIMEOUT):
        raise ValueError(
            f"task_timeout must be from 0.001 to {MAX_TASK_TIMEOUT:g} seconds (7 days), or None "
            f"for the broker's default (zbroker start --task-timeout), got {seconds!r}"
        )
    return seconds


def check_priority(priority: int) -> int:
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(
            f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
            f"({PRIORITY_MAX} runs first), got {priority!r}"
        )
    return priority


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_LIMIT):
        raise ValueError(
            f"limit must be an integer from 1 to {MAX_LIMIT:,} (or None for every entry), "
            f"got {limit!r}"
        )
    return limit


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How the broker should treat a task: checked once, then stamped on every EXECUTE."""

    priority: int = PRIORITY_DEFAULT
    retries: int | None = None  # extra attempts after failures; None: the broker's default
    queue_timeout: float | None = None  # seconds it may wait to start; None: as long as needed
    task_timeout: float | None = None  # seconds one attempt may run; None: the broker's default

    def __post_init__(self) -> None:
        check_priority(self.priority)
        check_retries(self.retries)
        check_queue_timeout(self.queue_timeout)
        check_task_timeout(self.task_timeout)

    def execute(self, task_id: str, function: str, payload: bytes) -> Execute:
        return Execute(
            task_id,
            function,
            payload,
            self.priority,
            self.retries,
            self.queue_timeout,
            self.task_timeout,
        )

    def execute_frames(self, task_id: str, function: str, payload: bytes) -> list[bytes]:
        """The EXECUTE frames of a task with these options (what `encode(execute(...))` gives,
        without the message in between)."""
        return execute_frames(
            task_id,
            function,
            payload,
            self.priority,
            self.retries,
            self.queue_timeout,
            self.task_timeout,
        )


class TaskDefaults:
    """A client's default task options, checked when set: `priority`, `retries`,
    `queue_timeout` and `task_timeout`. A call that gives none of its own reuses them as
    they are; a call that does keeps its last set, as most calls repeat it."""

    def __init__(self, defaults: TaskOptions) -> None:
        self.defaults = defaults
        self._last_options: tuple[object, TaskOptions] = (None, defaults)  # (key, options)

    @property
    def priority(self) -> int:
        return self.defaults.priority

    @priority.setter
    def priority(self, value: int) -> None:
        self.defaults = replace(self.defaults, priority=value)

    @property
    def retries(self) -> int | None:
        return self.defaults.retries  # None: the broker's default

    @retries.setter
    def retries(self, value: int | None) -> None:
        self.defaults = replace(self.defaults, retries=value)

    @property
    def queue_timeout(self) -> float | None:
        return self.defaults.queue_timeout  # None: wait as long as needed

    @queue_timeout.setter
    def queue_timeout(self, value: float | None) -> None:
        self.defaults = replace(self.defaults, queue_timeout=value)

    @property
    def task_timeout(self) -> float | None:
        return self.defaults.task_timeout  # None: the broker's default

    @task_timeout.setter
    def task_timeout(self, value: float | None) -> None:
        self.defaults = replace(self.defaults, task_timeout=value)

    def options(
        self,
        priority: int | None,
        retries: int | None,
        queue_timeout: float | None,
        task_timeout: float | None,
    ) -> TaskOptions:
        """One call's task options: each one given, else the default."""
        if priority is None and retries is None and queue_timeout is None and task_timeout is None:
            return self.defaults
        defaults = self.defaults
        wanted = (
            defaults.priority if priority is None else priority,
            defaults.retries if retries is None else retries,
            defaults.queue_timeout if queue_timeout is None else queue_timeout,
            defaults.task_timeout if task_timeout is None else task_timeout,
        )
        key = (wanted, tuple(map(type, wanted)))  # with types: True == 1, yet not a priority
        if key != self._last_options[0]:
            self._last_options = (key, TaskOptions(*wanted))
        return self._last_options[1]
