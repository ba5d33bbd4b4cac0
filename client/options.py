"""Task options and argument checks shared by the clients: a bad value fails here, with a
ValueError that says what is allowed, before anything is sent (the broker would only answer
ERROR malformed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from broker.protocol import (
    MAX_CLIENT_LENGTH,
    MAX_DEPENDENCIES,
    MAX_DLQ_LIMIT,
    MAX_NAME_LENGTH,
    MAX_QUEUE_TIMEOUT_MS,
    MAX_RETRIES,
    MAX_TASK_TIMEOUT_MS,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRY_ON,
    TaskSpec,
    execute_frames,
)
from client.errors import MessageTooLarge

MAX_TASK_TIMEOUT = MAX_TASK_TIMEOUT_MS / 1000  # seconds: 7 days
MAX_QUEUE_TIMEOUT = MAX_QUEUE_TIMEOUT_MS / 1000  # seconds: 1 day
# More than the tag, the command and an EXECUTE header take: names are at most 256 code
# points of up to 4 bytes each. An arguments frame shorter than the limit by this much fits.
HEADER_ROOM = 4096
RETRY_ON_ALL = "all"  # every failure RETRY_ON names
# Where a Client without `client_id` finds one (as zsubmit --client-id does).
CLIENT_ID_VARIABLE = "ZTB_CLIENT_ID"

# What `retry_on` takes: None (the broker's default), one name or "all", or a list of names
# ([]: none, only node loss and crashes are retried).
RetryOn = str | Iterable[str] | None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be a string of 1 to {MAX_NAME_LENGTH} characters")
    return value


def check_client_id(client_id: str | None) -> str | None:
    """A client id (protocol.md 5.11): None, or 1 to 64 characters without "|"."""
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_LENGTH:
        raise ValueError(f"client_id must be a string of 1 to {MAX_CLIENT_LENGTH} characters")
    if "|" in client_id:
        raise ValueError(f'client_id must not contain "|", got {client_id!r}')
    return client_id


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
    if seconds is not None and not (_is_number(seconds) and 0.001 <= seconds <= MAX_QUEUE_TIMEOUT):
        raise ValueError(
            f"queue_timeout must be 0.001 to {MAX_QUEUE_TIMEOUT:g} seconds or None, got {seconds!r}"
        )
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


def check_retry_on(retry_on: RetryOn) -> tuple[str, ...] | None:
    """The failures a task is retried on besides node loss and crashes (EXECUTE `retry_on`),
    as TaskSpec carries them: sorted, no repeats; None is the broker's default."""
    if retry_on is None:
        return None
    if retry_on == RETRY_ON_ALL:
        return tuple(sorted(RETRY_ON))
    names = [retry_on] if isinstance(retry_on, str) else retry_on
    if isinstance(names, Iterable):
        names = list(names)
        if all(isinstance(name, str) and name in RETRY_ON for name in names):
            return tuple(sorted(set(names)))
    allowed = ", ".join(repr(name) for name in (*RETRY_ON, RETRY_ON_ALL))
    raise ValueError(
        f"retry_on must be None (the broker's default), {allowed}, or a list of "
        f"{' and '.join(repr(name) for name in RETRY_ON)}, got {retry_on!r}"
    )


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_DLQ_LIMIT):
        raise ValueError(
            f"limit must be an integer from 1 to {MAX_DLQ_LIMIT:,} (or None for every entry), "
            f"got {limit!r}"
        )
    return limit


def check_max_message_size(size: int) -> int:
    if type(size) is not int or size < HEADER_ROOM:
        raise ValueError(
            f"max_message_size must be an integer of at least {HEADER_ROOM} bytes (the broker's "
            f"--max-message-size, 16 MiB by default), got {size!r}"
        )
    return size


def check_task_size(spec: TaskSpec, limit: int) -> None:
    """MessageTooLarge if the EXECUTE of `spec` alone is over `limit` bytes (all its frames
    from the tag on, as the broker counts them, protocol.md 9)."""
    if len(spec.args) <= limit - HEADER_ROOM:  # most tasks: one comparison
        return
    size = sum(len(frame) for frame in execute_frames(spec))
    if size > limit:
        what = f"the EXECUTE of task {spec.task_id} ({spec.function}, {len(spec.args):,} bytes "
        raise MessageTooLarge(what + "of arguments)", size, limit)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How the broker should treat a task, checked when made: a client's defaults, or the
    options of one map."""

    priority: int = PRIORITY_DEFAULT
    retries: int | None = None  # extra attempts after failures; None: the broker's default
    queue_timeout: float | None = None  # seconds it may wait to start; None: as long as needed
    task_timeout: float | None = None  # seconds one attempt may run; None: the broker's default
    # Failures retried besides node loss and crashes; None: the broker's default. Any form
    # check_retry_on takes is accepted and kept as its sorted tuple.
    retry_on: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_priority(self.priority)
        check_retries(self.retries)
        check_queue_timeout(self.queue_timeout)
        check_task_timeout(self.task_timeout)
        object.__setattr__(self, "retry_on", check_retry_on(self.retry_on))

    def spec(
        self,
        task_id: str,
        function: str,
        args: bytes,
        priority: int | None = None,
        retries: int | None = None,
        queue_timeout: float | None = None,
        task_timeout: float | None = None,
        retry_on: RetryOn = None,
    ) -> TaskSpec:
        """One task with these options, except those given here, which are checked.
        `retry_on` None keeps these options' (an empty list names no failure)."""
        return TaskSpec(
            task_id,
            function,
            args,
            self.priority if priority is None else check_priority(priority),
            self.retries if retries is None else check_retries(retries),
            self.queue_timeout if queue_timeout is None else check_queue_timeout(queue_timeout),
            self.task_timeout if task_timeout is None else check_task_timeout(task_timeout),
            self.retry_on if retry_on is None else check_retry_on(retry_on),
        )

    def override(
        self, priority: int | None, task_timeout: float | None, retry_on: RetryOn = None
    ) -> TaskOptions:
        """These options with `priority`, `task_timeout` and `retry_on` replaced where given."""
        if priority is None and task_timeout is None and retry_on is None:
            return self
        return replace(
            self,
            priority=self.priority if priority is None else priority,
            task_timeout=self.task_timeout if task_timeout is None else task_timeout,
            retry_on=self.retry_on if retry_on is None else check_retry_on(retry_on),
        )


class HasTaskId(Protocol):
    task_id: str


After = Iterable[HasTaskId | str] | None  # futures (anything with a task_id) or task ids


def with_dependencies(spec: TaskSpec, after: Iterable[HasTaskId | str]) -> TaskSpec:
    """`spec` that starts only once the tasks in `after` succeeded too (EXECUTE depends_on,
    protocol.md 5.7): futures or task ids, 1 to 256 tasks in all; ValueError otherwise."""
    ids: list[str] = []
    for item in after:
        task_id = item if isinstance(item, str) else getattr(item, "task_id", None)
        if not isinstance(task_id, str):
            raise ValueError("after takes futures (from Client.submit) or task ids (strings)")
        ids.append(check_name("a task id in after", task_id))
    if not ids:
        raise ValueError("after must name at least one task (a future or a task id)")
    return _depending(spec, (*(spec.depends_on or ()), *ids), spec.inputs)


def with_inputs(spec: TaskSpec, inputs: tuple[str, ...]) -> TaskSpec:
    """`spec` whose node gets the results of the tasks `inputs` in place of their futures
    in the arguments (EXECUTE inputs, protocol.md 5.8); they are dependencies too."""
    return _depending(spec, (*(spec.depends_on or ()), *inputs), inputs)


def _depending(
    spec: TaskSpec, depends_on: tuple[str, ...], inputs: tuple[str, ...] | None
) -> TaskSpec:
    ids = tuple(dict.fromkeys(depends_on))
    if len(ids) > MAX_DEPENDENCIES:
        raise ValueError(
            f"a task may depend on at most {MAX_DEPENDENCIES} tasks (futures in its "
            f"arguments and in after), got {len(ids)}"
        )
    return spec.replaced(depends_on=ids, inputs=inputs)
