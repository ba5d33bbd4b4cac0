"""Exceptions the clients raise. Every one of them is a `ClientError`."""

from __future__ import annotations

from typing import Any

from broker.protocol import TaskCompleted


class ClientError(Exception):
    """Base class of everything the ZTB clients raise on purpose."""


class TaskFailed(ClientError):
    """The task ran (or could not be run) and ended with a non-zero exit code."""

    def __init__(
        self,
        function: str,
        task_id: str,
        exit_code: int,
        error_type: str,
        message: str,
        attempts: int = 1,
    ) -> None:
        text = f"{function} failed (exit {exit_code}, {error_type})"
        super().__init__(f"{text}: {message}" if message else text)
        self.function = function
        self.task_id = task_id
        self.exit_code = exit_code
        self.error_type = error_type
        self.message = message
        self.attempts = attempts

    @classmethod
    def from_completed(cls, function: str, completed: TaskCompleted) -> TaskFailed:
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
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.function, self.task_id, self.exit_code, self.error_type, self.message)
        return type(self), (*args, self.attempts)


class BrokerTimeout(ClientError, TimeoutError):
    """The broker did not answer within the timeout, resends included."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(
            f"no answer from the broker at {url} within {timeout:g} s; "
            "is `zbroker start` running there?"
        )
        self.url = url
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, self.timeout)


class BrokerError(ClientError):
    """The broker answered ERROR: it could not decode or accept the request."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        about = f" (task {task_id})" if task_id else ""
        super().__init__(f"the broker refused the request{about}: {message} [{code}]")
        self.code = code
        self.message = message
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.message, self.task_id)
