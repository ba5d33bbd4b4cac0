"""Rows as the store reads them back: every column checked against the protocol's limits.

A store is data the broker trusts once loaded: a task restored with priority 99 or an empty
function name would break the scheduler far from its cause. So each row goes through msgspec
(`msgspec.convert` into the row types below, in C) and each spec through the same decoder of
TaskSpec that carries the protocol's limits in its field annotations. A row that does not fit
raises BadRow, which names the table, the row's task id and the field.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

from broker.core.deadletters import DeadLetter
from broker.core.events import Restored
from broker.core.journal import PendingTask
from broker.protocol import ErrorInfo, TaskCompleted, TaskSpec
from broker.protocol.limits import MAX_EXIT_CODE, MAX_HOST_LENGTH, Attempts, ExitCode, Name, Pid

Seq = Annotated[int, Meta(ge=0)]
FailedExitCode = Annotated[int, Meta(ge=1, le=MAX_EXIT_CODE)]

R = TypeVar("R", bound=Struct)

_SELECT_TASKS = "SELECT task_id, spec, seq, attempts, submitted_at FROM tasks ORDER BY seq"
_SELECT_RESULTS = """SELECT task_id, exit_code, result, error, attempts, finished_at
    FROM results ORDER BY pos"""
_SELECT_DEAD_LETTERS = """SELECT task_id, spec, attempts, exit_code, error, failed_at
    FROM dead_letters ORDER BY pos"""
_SELECT_NODES = "SELECT name, host, pid FROM nodes"
_SPEC = msgspec.msgpack.Decoder(TaskSpec)
_ERROR = msgspec.json.Decoder(ErrorInfo)
# Where msgspec.convert found a bad value: `$[row]` or `$[row][column]`.
_AT_ROW = re.compile(r"^(.*) - at `\$\[(\d+)\](?:\[(\d+)\])?`$")
_AT_FIELD = re.compile(r"^(.*) - at `\$\.?(.*)`$")


class BadRow(ValueError):
    """A row that does not hold what the broker wrote: its table, its task id (as found, or
    another key), the field and why."""

    def __init__(self, table: str, task_id: object, field: str, why: str, key: str = "task id"):
        shown = repr(task_id)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"bad row in table {table} ({key} {shown}): field {field}: {why}")


class TaskRow(Struct, array_like=True, frozen=True, gc=False):
    task_id: Name
    spec: bytes
    seq: Seq
    attempts: Attempts
    submitted_at: float


class ResultRow(Struct, array_like=True, frozen=True, gc=False):
    task_id: Name
    exit_code: ExitCode
    result: bytes
    error: str | None
    attempts: Attempts
    finished_at: float


class NodeRow(Struct, array_like=True, frozen=True, gc=False):
    name: Name
    host: Annotated[str, Meta(max_length=MAX_HOST_LENGTH)]
    pid: Pid


class DeadLetterRow(Struct, array_like=True, frozen=True, gc=False):
    task_id: Name
    spec: bytes
    attempts: Attempts
    exit_code: FailedExitCode
    error: str | None
    failed_at: float


def restored(conn: sqlite3.Connection, wall_offset: float, now: float) -> Restored:
    """Everything a store of the current schema holds. Unix times become monotonic times of
    this process (Unix time - `wall_offset`), never later than `now` (in case the wall clock
    was set back). Raises BadRow, or sqlite3.Error if the file cannot be read."""
    pending = pending_tasks(conn.execute(_SELECT_TASKS).fetchall(), wall_offset, now)
    kept = answers(conn.execute(_SELECT_RESULTS).fetchall(), wall_offset, now)
    dead = dead_letters(conn.execute(_SELECT_DEAD_LETTERS).fetchall(), wall_offset, now)
    row = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    if row is None or not isinstance(row[0], int) or row[0] < 0:
        found = "no such row" if row is None else f"{row[0]!r} is not a count"
        raise BadRow("meta", "next_seq", "value", found, key="key")
    next_seq = max(row[0], pending[-1].seq + 1) if pending else row[0]
    nodes = [
        (n.name, n.host, n.pid)
        for n in _convert(conn.execute(_SELECT_NODES).fetchall(), NodeRow, "nodes")
    ]
    return Restored(pending, kept, dead, next_seq, nodes)


def pending_tasks(rows: Sequence[Any], wall_offset: float, now: float) -> list[PendingTask]:
    """Rows of `tasks` (columns as TaskRow's fields) as PendingTasks, in the rows' order.
    Unix times become monotonic ones of this process, never later than `now`."""
    return [
        PendingTask(
            spec(row, "tasks"), row.seq, min(row.submitted_at - wall_offset, now), row.attempts
        )
        for row in _convert(rows, TaskRow, "tasks")
    ]


def answers(
    rows: Sequence[Any], wall_offset: float, now: float
) -> list[tuple[TaskCompleted, float]]:
    """Rows of `results` as (answer, when it was kept), in the rows' order."""
    return [
        (
            TaskCompleted(
                row.task_id, row.exit_code, row.result, error(row, "results"), row.attempts
            ),
            min(row.finished_at - wall_offset, now),
        )
        for row in _convert(rows, ResultRow, "results")
    ]


def dead_letters(rows: Sequence[Any], wall_offset: float, now: float) -> list[DeadLetter]:
    """Rows of `dead_letters` as DeadLetters, in the rows' order."""
    return [
        DeadLetter(
            spec(row, "dead_letters"),
            row.attempts,
            row.exit_code,
            error(row, "dead_letters"),
            min(row.failed_at - wall_offset, now),
        )
        for row in _convert(rows, DeadLetterRow, "dead_letters")
    ]


def spec(row: TaskRow | DeadLetterRow, table: str) -> TaskSpec:
    """The row's TaskSpec, checked against the protocol's limits and the row's task id."""
    try:
        decoded = _SPEC.decode(row.spec)
    except msgspec.DecodeError as exc:
        match = _AT_FIELD.match(str(exc))
        if match is None:
            raise BadRow(table, row.task_id, "spec", str(exc)) from None
        raise BadRow(table, row.task_id, f"spec.{match[2]}", match[1]) from None
    if decoded.task_id != row.task_id:
        why = f"{decoded.task_id!r} is not the row's task id"
        raise BadRow(table, row.task_id, "spec.task_id", why)
    return decoded


def error(row: ResultRow | DeadLetterRow, table: str) -> ErrorInfo | None:
    """The row's `error`: NULL, or JSON {"type": str, "message": str}."""
    if row.error is None:
        return None
    try:
        return _ERROR.decode(row.error)
    except msgspec.DecodeError as exc:
        why = f'{exc}; expected JSON {{"type": text, "message": text}}'
        raise BadRow(table, row.task_id, "error", why) from None


def _convert(rows: Sequence[Any], row_type: type[R], table: str) -> list[R]:
    try:
        # builtin_types: a TEXT value where bytes belong is refused, not read as base64.
        return msgspec.convert(rows, list[row_type], builtin_types=(bytes,))  # type: ignore[valid-type]
    except msgspec.ValidationError as exc:
        match = _AT_ROW.match(str(exc))
        if match is None:  # not raised for the rows of a query: the columns are fixed
            raise BadRow(table, None, "?", str(exc)) from None
        field = "?" if match[3] is None else row_type.__struct_fields__[int(match[3])]
        raise BadRow(table, rows[int(match[2])][0], field, match[1]) from None
