"""The bookkeeping behind `Client.submit`'s futures, without sockets, threads or a clock:
which futures wait for which task id, which EXECUTEs and CANCELs are still to be sent, when
everything unanswered is due to be sent again, and how each answer settles its futures.
The I/O thread (client/engine.py) feeds it and carries out what it returns; its tests drive
it with plain objects for futures and `now` as an argument."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from broker.protocol import (
    ERR_CONFLICT,
    Batch,
    Cancel,
    Cancelled,
    Error,
    Execute,
    Message,
    TaskCompleted,
    TaskSpec,
)
from broker.tracing import ClientSpans
from client.errors import BrokerError, ClientError, broker_error
from client.payloads import result_of

_log = logging.getLogger(__name__)

F = TypeVar("F")  # a future; the ledger only keeps it and hands it back
Outgoing = Execute | Cancel  # what the ledger asks to send


@dataclass(slots=True)
class Waiting(Generic[F]):
    """One task id this client waits for: its EXECUTE as first sent, and its futures."""

    execute: Execute
    futures: list[F]
    sent: bool = False  # its EXECUTE went out at least once


@dataclass(frozen=True, slots=True)
class Settled(Generic[F]):
    """How one future ends: with `value`, or with `error` when that is not None."""

    future: F
    value: Any = None
    error: ClientError | None = None


@dataclass(slots=True)
class Ledger(Generic[F]):
    """Resend rule (as `execute` and `map`): when nothing at all has come from the broker
    for `resend_interval` while anything is unanswered, or when the connection was lost
    and made again (`resend_all`), every EXECUTE and CANCEL still unanswered is sent again
    with its task id; the broker runs a task once whatever the count of EXECUTEs, and a
    CANCEL of a task already cancelled changes nothing."""

    resend_interval: float
    # Task id -> the futures waiting for it. Several futures of one id share one answer.
    _waiting: dict[str, Waiting[F]] = field(default_factory=dict)
    # Task ids whose CANCEL is unanswered (the broker answers CANCELLED or ERROR).
    _cancels: set[str] = field(default_factory=set)
    # What to send next, in the order asked: EXECUTEs and CANCELs by task id.
    _unsent: list[tuple[type[Outgoing], str]] = field(default_factory=list)
    _quiet_since: float = 0.0  # when the broker last sent anything, or the last resend
    spans: ClientSpans | None = None  # the tasks' submit spans, when the client traces
    client: str | None = None  # the client id its messages name (protocol.md 5.11)

    # ------------------------------------------------------------------ the caller's side

    def submitted(self, future: F, spec: TaskSpec, now: float) -> list[Settled[F]]:
        """`future` waits for task `spec`. A task id already waited for shares its answer
        (its EXECUTE is not sent twice), unless the function or arguments differ: then
        `future` fails at once, as the broker would refuse it (ERROR conflict)."""
        if not self._waiting and not self._cancels:
            self._quiet_since = now  # the silence counts from the first thing unanswered
        waiting = self._waiting.get(spec.task_id)
        if waiting is None:
            self._waiting[spec.task_id] = Waiting(Execute(spec, self.client), [future])
            self._unsent.append((Execute, spec.task_id))
            return []
        first = waiting.execute.spec
        if (first.function, first.args) != (spec.function, spec.args):
            error = BrokerError(
                ERR_CONFLICT,
                f"this client already waits for task {spec.task_id!r} of {first.function} "
                "with other arguments",
                spec.task_id,
            )
            return [Settled(future, error=error)]
        waiting.futures.append(future)
        return []

    def cancelled(self, future: F, task_id: str) -> None:
        """`future` was cancelled by its caller: it waits no more. When no other future of
        this client waits for the task, the task is cancelled at the broker (CANCEL), or,
        if its EXECUTE has not gone out yet, never sent."""
        waiting = self._waiting.get(task_id)
        if waiting is None or future not in waiting.futures:
            return
        waiting.futures.remove(future)
        if waiting.futures:
            return
        del self._waiting[task_id]
        if waiting.sent:
            self._cancels.add(task_id)
            self._unsent.append((Cancel, task_id))

    def outgoing(self) -> list[Outgoing]:
        """The EXECUTEs and CANCELs not sent yet, in the order asked; they count as sent."""
        found: list[Outgoing] = []
        for kind, task_id in self._unsent:
            if kind is Execute:
                waiting = self._waiting.get(task_id)
                if waiting is not None and not waiting.sent:
                    waiting.sent = True
                    found.append(waiting.execute)
            elif task_id in self._cancels:
                found.append(Cancel(task_id, self.client))
        self._unsent.clear()
        return found

    # ------------------------------------------------------------------ the broker's side

    def resend_due(self) -> float | None:
        """When everything unanswered is to be sent again; None while nothing is."""
        if not self._waiting and not self._cancels:
            return None
        return self._quiet_since + self.resend_interval

    def resends(self, now: float) -> list[Outgoing]:
        """Every EXECUTE and CANCEL sent and not answered, once the broker has been silent
        for `resend_interval`; else nothing."""
        due = self.resend_due()
        if due is None or now < due:
            return []
        return self.resend_all(now)

    def resend_all(self, now: float) -> list[Outgoing]:
        """Every EXECUTE and CANCEL sent and not answered, now (the connection to the broker
        was lost and made again: a restarted broker knows only what is sent again); the
        next resend is due `resend_interval` later."""
        self._quiet_since = now
        found: list[Outgoing] = [w.execute for w in self._waiting.values() if w.sent]
        found += [Cancel(task_id, self.client) for task_id in self._cancels]
        return found

    def answered(self, message: Message, now: float) -> list[Settled[F]]:
        """What a message from the broker settles. Anything from it ends a silence."""
        self._quiet_since = now
        if type(message) is TaskCompleted:
            return self._completed(message)
        if type(message) is Batch:
            settled: list[Settled[F]] = []
            for item in message.items:
                if type(item) is TaskCompleted:
                    settled += self._completed(item)
                else:
                    _log.warning("ignoring a bad answer in a batch from the broker: %s", item)
            return settled
        if type(message) is Error:
            return self._refused(message)
        if type(message) is Cancelled:
            self._cancels.discard(message.task_id)
            return []
        _log.warning("ignoring an unexpected %s from the broker", type(message).__name__)
        return []

    def fail_all(self, reason: str | ClientError) -> list[Settled[F]]:
        """Every waiting future fails: with ClientError(`reason` about its task), or with
        `reason` itself when it is an error; the ledger is empty afterwards."""
        settled = [
            Settled(
                future,
                error=reason
                if isinstance(reason, ClientError)
                else ClientError(f"task {task_id}: {reason}"),
            )
            for task_id, waiting in self._waiting.items()
            for future in waiting.futures
        ]
        self._waiting.clear()
        self._cancels.clear()
        self._unsent.clear()
        return settled

    # ------------------------------------------------------------------ looking

    def __len__(self) -> int:
        """Futures waiting."""
        return sum(len(waiting.futures) for waiting in self._waiting.values())

    def unanswered_cancels(self) -> set[str]:
        return set(self._cancels)

    def check_invariants(self) -> None:
        for task_id, waiting in self._waiting.items():
            assert waiting.futures, f"task {task_id} is waited for by no future"
            assert waiting.execute.spec.task_id == task_id
            assert len(set(map(id, waiting.futures))) == len(waiting.futures)
        for kind, _ in self._unsent:
            assert kind in (Execute, Cancel)

    # ------------------------------------------------------------------ internals

    def _completed(self, completed: TaskCompleted) -> list[Settled[F]]:
        waiting = self._waiting.pop(completed.task_id, None)
        if waiting is None:  # answered already (a resend's second answer), or cancelled here
            return []
        if self.spans is not None:
            self.spans.answered(completed)
        spec = waiting.execute.spec
        try:
            value = result_of(spec.function, completed, spec.task_timeout)
        except ClientError as exc:
            return [Settled(future, error=exc) for future in waiting.futures]
        return [Settled(future, value) for future in waiting.futures]

    def _refused(self, error: Error) -> list[Settled[F]]:
        task_id = error.task_id
        if task_id in self._cancels:  # it answers the CANCEL: not_found, or an older broker
            self._cancels.discard(task_id)
            _log.info(
                "the broker did not cancel task %s: %s [%s]", task_id, error.message, error.code
            )
            return []
        waiting = None if task_id is None else self._waiting.pop(task_id, None)
        if waiting is None:
            _log.warning("the broker reported an error: %s [%s]", error.message, error.code)
            return []
        exc = broker_error(error)
        if self.spans is not None:
            self.spans.refused(task_id, str(exc))
        return [Settled(future, error=exc) for future in waiting.futures]
