"""Exceptions the clients raise, every one a `ClientError`:

- `TaskFailed`: the task ran (or could not run) and ended with a non-zero exit code;
- `BrokerError`: the broker answered ERROR, it refused the request; `NotFound` when it has
  no such task;
- `BrokerTimeout`: connected, but no answer within the wait, resends included;
- `BrokerUnreachable`: nothing accepted a connection at the broker's URL in time (also a
  ConnectionError);
- `MessageTooLarge`: a request over the message size limit, refused before it is sent (also
  a ValueError);
- `BadEndpoint`: the broker URL is not one ZeroMQ can connect to (also a ValueError);
- `BadReply`: the reply breaks the protocol (also a `RemoteProtocolError`).
"""

from __future__ import annotations

from typing import Any

from broker.protocol import (
    ERR_NOT_FOUND,
    EXIT_CANCELLED,
    EXIT_EXPIRED,
    EXIT_NODE_LOST,
    EXIT_TIMEOUT,
    EXIT_WORKER_CRASHED,
    Error,
    RemoteProtocolError,
    TaskCompleted,
)


class ClientError(Exception):
    """Base class of everything the ZTB clients raise on purpose."""


class TaskFailed(ClientError):
    """The task ran (or could not be run) and ended with a non-zero exit code.

    `task_timeout`: the execution limit the task was sent with (None: the broker's), used
    only to word the message of a timeout (exit 124)."""

    def __init__(
        self,
        function: str,
        task_id: str,
        exit_code: int,
        error_type: str,
        message: str,
        attempts: int = 1,
        task_timeout: float | None = None,
    ) -> None:
        what = failure_summary(function, exit_code, error_type, task_timeout)
        super().__init__(f"{what}: {message}" if message else what)
        self.function = function
        self.task_id = task_id
        self.exit_code = exit_code
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        self.task_timeout = task_timeout

    @classmethod
    def from_completed(
        cls, function: str, completed: TaskCompleted, task_timeout: float | None = None
    ) -> TaskFailed:
        error = completed.error
        error_type = error.type if error is not None else "Error"
        message = error.message if error is not None else ""
        return cls(
            function,
            completed.task_id,
            completed.exit_code,
            error_type,
            message,
            completed.attempts,
            task_timeout,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.function, self.task_id, self.exit_code, self.error_type, self.message)
        return type(self), (*args, self.attempts, self.task_timeout)


def failure_summary(
    function: str, exit_code: int, error_type: str, task_timeout: float | None = None
) -> str:
    """`FUNCTION failed (exit N, Type)`, or in words for the failures the broker reports."""
    code = f"(exit {exit_code}, {error_type})"
    if exit_code == EXIT_TIMEOUT:
        limit = "the broker's task timeout" if task_timeout is None else f"{task_timeout:g} s"
        return f"{function} timed out after {limit} {code}"
    if exit_code == EXIT_WORKER_CRASHED:
        return f"{function} killed the node process running it {code}"
    if exit_code == EXIT_NODE_LOST:
        return f"{function} failed: its node died or stopped answering {code}"
    if exit_code == EXIT_CANCELLED:
        return f"{function} was cancelled {code}"
    if exit_code == EXIT_EXPIRED:
        return f"{function} expired in the queue before a node was free to start it {code}"
    return f"{function} failed {code}"


class BrokerTimeout(ClientError, TimeoutError):
    """The broker accepted the connection but did not answer within the timeout, resends
    included. `answered_before`: whether it answered anything on this connection before;
    only when it never did does the message ask whether the broker runs there."""

    def __init__(self, url: str, timeout: float, answered_before: bool = False) -> None:
        hint = "" if answered_before else "; is `zbroker start` running there?"
        super().__init__(f"no answer from the broker at {url} within {timeout:g} s{hint}")
        self.url = url
        self.timeout = timeout
        self.answered_before = answered_before

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.timeout, self.answered_before)


class BrokerUnreachable(ClientError, ConnectionError):
    """Nothing at the broker's URL accepted a ZeroMQ connection within `waited` seconds:
    no broker listens there, the host does not resolve, or what listens is not ZeroMQ.
    `reason` says which of them the connection attempts showed."""

    def __init__(self, url: str, waited: float, reason: str) -> None:
        super().__init__(
            f"cannot reach the broker at {url}: {reason} (tried for {waited:g} s); "
            "is `zbroker start` running there, and is the address right?"
        )
        self.url = url
        self.waited = waited
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.waited, self.reason)


class MessageTooLarge(ClientError, ValueError):
    """A request larger than the message size limit, refused before it was sent (the broker
    would refuse it with ERROR `too_large`, protocol.md 9)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size:,} bytes, over the message size limit of {limit:,} bytes; "
            "send a reference to large data (a path, a URL) instead of the data, or raise the "
            "limit on both sides (zbroker start --max-message-size, "
            "Client(max_message_size=...))"
        )
        self.what = what
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.what, self.size, self.limit)


class BrokerError(ClientError):
    """The broker answered ERROR: it could not decode or would not accept the request."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        about = f" (task {task_id})" if task_id else ""
        super().__init__(f"the broker refused the request{about}: {message} [{code}]")
        self.code = code
        self.message = message
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.message, self.task_id)


class NotFound(BrokerError, KeyError):
    """The broker has no such task (ERROR `not_found`), e.g. a task id that is not in the
    dead-letter queue. Also a KeyError, as for a missing key of a dict."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(code, message, task_id)
        about = f"task {task_id!r}" if task_id else "the task"
        self.args = (f"the broker does not have {about}: {message} [{code}]",)

    def __str__(self) -> str:
        # KeyError would show the repr of the message.
        return str(self.args[0])


class BadEndpoint(ClientError, ValueError):
    """The broker URL is not a ZeroMQ endpoint this process can connect to."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot use {url!r} as the broker's address: {reason}; "
            "give an endpoint like tcp://127.0.0.1:5000"
        )
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.reason)


class BadReply(ClientError, RemoteProtocolError):
    """The broker's reply breaks protocol.md: it does not decode, or lacks what the request
    asks for. Resending does not help: the peer may not be a ZTB/1 broker at all."""


def broker_error(error: Error) -> BrokerError:
    """The exception for an ERROR reply: NotFound for `not_found`, else BrokerError."""
    kind = NotFound if error.code == ERR_NOT_FOUND else BrokerError
    return kind(error.code, error.message, error.task_id)
