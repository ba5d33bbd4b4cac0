"""Requests about the broker rather than about one task: STATUS and the dead-letter queue.

`BrokerRequests` is mixed into `Client`, which supplies `_exchange` (the REQ socket with its
Lazy Pirate resends); this module itself never touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from broker.protocol import (
    DLQ_LIST,
    DLQ_PURGE,
    DLQ_REPLAY,
    DLQ_SHOW,
    DeadLetters,
    DeadLettersReply,
    Error,
    Message,
    Status,
    StatusReply,
    encode,
    loads_payload,
)
from client.errors import ClientError
from client.options import check_limit, check_name, check_timeout

Reply = TypeVar("Reply", StatusReply, DeadLettersReply)
T = TypeVar("T")


class BrokerRequests:
    """`status()` and the dead-letter queue: tasks that failed for good (retries used up,
    timed out, expired, node lost), which the broker keeps until they are replayed or purged.

    A lost reply is resent like an EXECUTE. `replay` and `purge_dead_letters` act once: the
    answer to such a resend reports the task as missing (replay) or counts 0 (purge).
    """

    url: str

    def _exchange(
        self, request: list[bytes], answers: Callable[[Message], bool], timeout: float | None
    ) -> Message:
        raise NotImplementedError  # supplied by Client

    def status(self, timeout: float | None = 5.0) -> dict[str, Any]:
        """The broker's STATUS_REPLY body: nodes, queued, running, counters."""
        return self._ask(Status(), StatusReply, timeout).body

    def dead_letters(
        self, limit: int | None = None, *, timeout: float | None = 5.0
    ) -> list[dict[str, Any]]:
        """The dead-letter entries, newest first, at most `limit` (None: all of them).

        Each is a dict with task_id, function, priority, retries, attempts, exit_code,
        error ({type, message} or None) and failed_at (seconds since the Unix epoch)."""
        request = DeadLetters(DLQ_LIST, limit=check_limit(limit))
        entries = _field(self._ask(request, DeadLettersReply, timeout).body, "dead_letters", list)
        return [entry for entry in entries if isinstance(entry, dict)]

    def dead_letter(self, task_id: str, *, timeout: float | None = 5.0) -> dict[str, Any]:
        """One entry (as in `dead_letters`) plus "args": the task's arguments, decoded.

        Arguments that are not valid JSON (the task failed with BadArguments) come back as
        "args": None and "raw_args": their text. Raises NotFound (a KeyError too) when the
        task is not in the dead-letter queue."""
        request = DeadLetters(DLQ_SHOW, check_name("task_id", task_id))
        reply = self._ask(request, DeadLettersReply, timeout, task_id)
        entry = dict(_field(reply.body, "dead_letter", dict))
        entry.update(_arguments(reply.payload))
        return entry

    def replay(
        self, task_id: str | None = None, *, timeout: float | None = 5.0
    ) -> dict[str, list[str]]:
        """Queue a dead letter again under its own id with a fresh count of attempts (None:
        every dead letter). Returns {"replayed": [ids], "missing": [ids not in the queue or
        pending again]}. The results go to nobody: submit the task again to wait for one."""
        body = self._act(DLQ_REPLAY, task_id, timeout)
        return {
            "replayed": _field(body, "replayed", list),
            "missing": _field(body, "missing", list),
        }

    def purge_dead_letters(self, task_id: str | None = None, *, timeout: float | None = 5.0) -> int:
        """Forget a dead letter (None: every one of them); returns how many were removed."""
        return _field(self._act(DLQ_PURGE, task_id, timeout), "purged", int)

    # ------------------------------------------------------------------------- internals

    def _act(self, op: str, task_id: str | None, timeout: float | None) -> dict[str, Any]:
        if task_id is not None:
            check_name("task_id", task_id)
        return self._ask(DeadLetters(op, task_id), DeadLettersReply, timeout, task_id).body

    def _ask(
        self,
        request: Message,
        kind: type[Reply],
        timeout: float | None,
        task_id: str | None = None,
    ) -> Reply:
        """The broker's answer of type `kind`; an ERROR raises BrokerError or NotFound."""

        def answers(reply: Message) -> bool:
            if isinstance(reply, Error):
                return task_id is None or reply.task_id in (None, task_id)
            return isinstance(reply, kind)

        reply = self._exchange(encode(request), answers, check_timeout(timeout))
        if not isinstance(reply, kind):
            raise ClientError(
                f"unexpected reply {type(reply).__name__} to {type(request).__name__}"
            )
        return reply


def _field(body: dict[str, Any], key: str, kind: type[T]) -> T:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ClientError(
            f"the broker's DLQ_REPLY has no {kind.__name__} {key!r} (protocol.md 3.13): {body!r}"
        )
    return value


def _arguments(payload: bytes | None) -> dict[str, Any]:
    if payload is None:
        raise ClientError(
            "the broker's DLQ_REPLY to show has no arguments frame (protocol.md 3.13)"
        )
    try:
        return {"args": loads_payload(payload)}
    except ValueError:
        return {"args": None, "raw_args": payload.decode("utf-8", "replace")}
