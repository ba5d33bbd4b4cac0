"""The control client: requests that name a task by its id alone (FETCH its answer, CANCEL
it), STATUS and the dead-letter queue. `Client`, `zsubmit result|cancel` and `zbroker
status` / `zbroker dlq` all ask through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from broker.protocol import (
    DLQ_LIST,
    DLQ_PURGE,
    DLQ_REPLAY,
    DLQ_SHOW,
    ERR_MALFORMED,
    MAX_STATUS_PAGE,
    NODES_ALL,
    Cancel,
    Cancelled,
    Dlq,
    DlqReply,
    Error,
    Fetch,
    Message,
    Status,
    StatusReply,
    TaskCompleted,
    encode,
    loads_payload,
)
from client.errors import BadReply
from client.link import ReqLink
from client.options import check_limit, check_name, check_timeout

Reply = TypeVar("Reply", StatusReply, DlqReply, TaskCompleted, Cancelled)
T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0  # seconds a control request waits for its answer


@dataclass(frozen=True, slots=True)
class DeadLetterList:
    """The newest dead letters, as `ControlClient.dead_letters` asked for them."""

    entries: list[dict[str, Any]]  # newest first
    total: int  # how many the queue holds, also those not listed


class ControlClient:
    """`status()` and the dead-letter queue: tasks that failed for good (retries used up,
    timed out, expired, node lost), which the broker keeps until they are replayed or purged.

    Each request goes through `link` (its Lazy Pirate resends included), which the caller
    owns and closes. `replay` and `purge` act once: the answer to a resend of one whose
    reply was lost reports the task as missing (replay) or counts 0 (purge). Arguments are
    checked before anything is sent (ValueError); an ERROR answer raises BrokerError
    (NotFound for a task the broker does not have), no answer BrokerTimeout, a reply
    without what the request asks for BadReply.
    """

    def __init__(self, link: ReqLink) -> None:
        self._link = link

    def fetch(self, task_id: str, timeout: float | None = DEFAULT_TIMEOUT) -> TaskCompleted:
        """The answer of task `task_id` (FETCH, protocol.md 3.19): at once if the broker
        keeps it (or the task is a dead letter), else when the task is answered, waiting up
        to `timeout` seconds (None: without end; BrokerTimeout after it). NotFound (a
        KeyError too) when the broker knows no such task."""
        request = Fetch(check_name("task_id", task_id), self._link.contact.client_id)
        return self._ask(request, TaskCompleted, timeout, _about(task_id))

    def cancel(self, task_id: str, timeout: float | None = DEFAULT_TIMEOUT) -> str:
        """Cancel task `task_id` (CANCEL, protocol.md 3.17): what it was when cancelled,
        "queued", "held" or "running" (its requesters got exit 130 Cancelled), or
        "finished" (answered already: nothing changed). NotFound when the broker knows no
        such task."""
        request = Cancel(check_name("task_id", task_id), self._link.contact.client_id)
        return self._ask(request, Cancelled, timeout, _about(task_id)).was

    def status(
        self, timeout: float | None = DEFAULT_TIMEOUT, *, all_nodes: bool = False
    ) -> dict[str, Any]:
        """The broker's STATUS_REPLY body: nodes, queued, running, counters. `nodes` lists
        the 50 busiest nodes (all of them when there are no more), or with `all_nodes`
        every node, asked for in pages of 500 (protocol.md 3.10); `nodes_total` counts
        them all."""
        body = self._ask(Status(), StatusReply, timeout).body
        if all_nodes:
            body["nodes"] = self.nodes(timeout)
            body["nodes_listed"] = NODES_ALL
        return body

    def nodes(self, timeout: float | None = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """Every registered node as STATUS_REPLY shows one, in the order they registered,
        asked for a page at a time (`timeout` per page). A broker that predates pages
        (protocol.md 3.10) lists them all at once."""
        nodes: list[dict[str, Any]] = []
        while True:
            body = self.nodes_page(len(nodes), MAX_STATUS_PAGE, timeout)
            page = [n for n in _field(body, "nodes", list) if isinstance(n, dict)]
            nodes += page
            if len(page) < MAX_STATUS_PAGE or body.get("nodes_listed") != NODES_ALL:
                return nodes

    def nodes_page(
        self, offset: int, limit: int = MAX_STATUS_PAGE, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """The STATUS_REPLY body listing at most `limit` nodes (up to 500) from `offset`,
        in the order they registered (protocol.md 3.10)."""
        return self._ask(Status(NODES_ALL, offset, limit), StatusReply, timeout).body

    def dead_letters(
        self, limit: int | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> DeadLetterList:
        """The dead-letter entries, newest first, at most `limit` (None: all of them).

        Each is a dict with task_id, function, priority, retries, attempts, exit_code,
        error ({type, message} or None) and failed_at (seconds since the Unix epoch)."""
        request = Dlq(DLQ_LIST, limit=check_limit(limit))
        body = self._ask(request, DlqReply, timeout).body
        entries = [entry for entry in _field(body, "dead_letters", list) if isinstance(entry, dict)]
        total = body.get("total")
        return DeadLetterList(entries, total if type(total) is int else len(entries))

    def dead_letter(
        self, task_id: str, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """One entry (as in `dead_letters`) plus "args": the task's arguments, decoded.

        Arguments that are not valid JSON (the task failed with BadArguments) come back as
        "args": None and "raw_args": their text. Raises NotFound (a KeyError too) when the
        task is not in the dead-letter queue."""
        request = Dlq(DLQ_SHOW, check_name("task_id", task_id))
        reply = self._ask(request, DlqReply, timeout)
        entry = dict(_field(reply.body, "dead_letter", dict))
        entry.update(_arguments(reply.args))
        return entry

    def replay(
        self, task_id: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> dict[str, list[str]]:
        """Queue a dead letter again under its own id with a fresh count of attempts (None:
        every dead letter). Returns {"replayed": [ids], "missing": [ids not in the queue or
        pending again]}. The results go to nobody: submit the task again to wait for one."""
        body = self._act(DLQ_REPLAY, task_id, timeout)
        return {
            "replayed": _field(body, "replayed", list),
            "missing": _field(body, "missing", list),
        }

    def purge(self, task_id: str | None = None, *, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Forget a dead letter (None: every one of them); returns how many were removed."""
        return _field(self._act(DLQ_PURGE, task_id, timeout), "purged", int)

    # ------------------------------------------------------------------------- internals

    def _act(self, op: str, task_id: str | None, timeout: float | None) -> dict[str, Any]:
        if task_id is not None:
            check_name("task_id", task_id)
        return self._ask(Dlq(op, task_id), DlqReply, timeout).body

    def _ask(
        self,
        request: Message,
        kind: type[Reply],
        timeout: float | None,
        answers: Callable[[Message], bool] | None = None,
    ) -> Reply:
        """The broker's answer, which must be of type `kind` (`answers`: which replies
        answer the request; by default any)."""
        wait = check_timeout(timeout)
        reply = self._link.exchange(encode(request), answers or _any_reply, wait)
        if not isinstance(reply, kind):
            raise BadReply(
                ERR_MALFORMED,
                f"the broker at {self._link.url} answered {type(reply).__name__} "
                f"to {type(request).__name__}",
            )
        return reply


def _about(task_id: str) -> Callable[[Message], bool]:
    """Which replies answer a request about `task_id`: a stale TASK_COMPLETED of another
    task (a REQ socket's earlier request) does not."""

    def answers(reply: Message) -> bool:
        if isinstance(reply, (TaskCompleted, Cancelled)):
            return reply.task_id == task_id
        return not isinstance(reply, Error) or reply.task_id in (None, task_id)

    return answers


def _any_reply(reply: Message) -> bool:
    # Every reply on a REQ socket answers the request in flight; a control request has no
    # task id to check it by.
    return True


def _field(body: dict[str, Any], key: str, kind: type[T]) -> T:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadReply(
            ERR_MALFORMED,
            f"the broker's DLQ_REPLY has no {kind.__name__} {key!r} (protocol.md 3.13): {body!r}",
        )
    return value


def _arguments(args: bytes | None) -> dict[str, Any]:
    if args is None:
        raise BadReply(
            ERR_MALFORMED,
            "the broker's DLQ_REPLY to show has no arguments frame (protocol.md 3.13)",
        )
    try:
        return {"args": loads_payload(args)}
    except ValueError:
        return {"args": None, "raw_args": args.decode("utf-8", "replace")}
