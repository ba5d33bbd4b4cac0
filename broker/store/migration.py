"""The upgrade of a store of an older schema to the current one (3), in one transaction.

A version-1 store keeps a task's options in columns of their own (function, payload, priority,
retries, timeout, expires_at); version 2 keeps the spec whole. Each version-1 row becomes a
TaskSpec checked against the protocol's limits. Version 3 adds the table of registered node
processes (empty after an upgrade: the broker then waits for no node to claim its attempts).
The migrated store is read back through the same checks as at every start before the
transaction commits: a row that does not fit leaves the file as it was and the broker refuses
it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, NamedTuple

import msgspec

from broker.protocol import MAX_TASK_TIMEOUT_MS, TaskSpec
from broker.store import rows
from broker.store.rows import BadRow
from broker.store.schema import SCHEMA_VERSION, TABLES

_V1_TASKS = """SELECT task_id, function, payload, priority, retries, timeout, expires_at,
    seq, attempts, submitted_at FROM tasks"""
_TIMEOUT = 5  # the column of the timeout in both queries
_V1_DEAD_LETTERS = """SELECT task_id, function, payload, priority, retries, timeout, pos,
    attempts, exit_code, error, failed_at FROM dead_letters"""
# Version-1 column of each TaskSpec field, so that an error names what the file holds.
_V1_COLUMN = {"args": "payload", "task_timeout": "timeout", "queue_timeout": "expires_at"}
_ENCODE = msgspec.msgpack.Encoder().encode
_MIN_TASK_TIMEOUT, _MAX_TASK_TIMEOUT = 0.001, MAX_TASK_TIMEOUT_MS / 1000


class Migrated(NamedTuple):
    tasks: int  # pending tasks
    dead_letters: int
    defaulted: int  # task timeouts left to the broker's default (see _task_timeout)


def migrate(conn: sqlite3.Connection, version: int) -> Migrated:
    """Rewrite the tables of a store of schema `version` in `conn` (open, no transaction
    active) as the current schema, in one transaction. Raises BadRow (the store unchanged)
    or sqlite3.Error."""
    conn.execute("BEGIN IMMEDIATE")
    v1_tasks: list[Any] = []
    v1_dead: list[Any] = []
    try:
        if version < 2:
            v1_tasks = conn.execute(_V1_TASKS).fetchall()
            v1_dead = conn.execute(_V1_DEAD_LETTERS).fetchall()
            tasks = [_task_row(row) for row in v1_tasks]
            dead = [_dead_letter_row(row) for row in v1_dead]
            for table in ("tasks", "dead_letters"):
                conn.execute(f"DROP TABLE {table}")
                conn.execute(TABLES[table])
            conn.execute("ALTER TABLE results RENAME COLUMN payload TO result")
            conn.executemany("INSERT INTO tasks VALUES (?,?,?,?,?)", tasks)
            conn.executemany("INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?)", dead)
        if version < 3:
            conn.execute(TABLES["nodes"])
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        restored = rows.restored(conn, 0.0, float("inf"))  # raises BadRow if a row does not fit
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The cause is what counts: the open is refused and closing the connection
            # discards the transaction anyway.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    timeouts = [row[_TIMEOUT] for row in v1_tasks + v1_dead]
    defaulted = sum(t is not None and _task_timeout(t) is None for t in timeouts)
    return Migrated(len(restored.pending), len(restored.dead_letters), defaulted)


def _task_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    task_id, *options, expires_at, seq, attempts, submitted_at = row
    spec = _spec("tasks", task_id, options, _queue_timeout(expires_at, submitted_at))
    return (task_id, _ENCODE(spec), seq, attempts, submitted_at)


def _dead_letter_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    task_id, *options, pos, attempts, exit_code, error, failed_at = row
    spec = _spec("dead_letters", task_id, options, None)
    return (pos, task_id, _ENCODE(spec), attempts, exit_code, error, failed_at)


def _spec(table: str, task_id: object, options: list[Any], queue_timeout: object) -> TaskSpec:
    """The TaskSpec of a version-1 row: `options` are its function, payload, priority,
    retries and timeout columns."""
    function, payload, priority, retries, timeout = options
    fields: dict[str, object] = {
        "task_id": task_id,
        "function": function,
        "args": payload,
        "priority": priority,
        "retries": retries,
        "queue_timeout": queue_timeout,
        "task_timeout": _task_timeout(timeout),
    }
    try:
        # builtin_types: a TEXT payload is refused, not read as base64.
        return msgspec.convert(fields, TaskSpec, builtin_types=(bytes,))
    except msgspec.ValidationError as exc:
        why, _, where = str(exc).partition(" - at `$.")
        field = where.rstrip("`") or "?"
        raise BadRow(table, task_id, _V1_COLUMN.get(field, field), why) from None


def _task_timeout(timeout: object) -> object:
    """A version-1 row holds the task timeout in force, the broker's default included, which
    `zbroker start --task-timeout` does not bound. A timeout outside the protocol's limits
    can only be that default, so it becomes None: the broker's default again."""
    if isinstance(timeout, float | int) and not _MIN_TASK_TIMEOUT <= timeout <= _MAX_TASK_TIMEOUT:
        return None
    return timeout


def _queue_timeout(expires_at: object, submitted_at: object) -> object:
    """A version-1 row holds the queue deadline as a time; the spec holds the seconds a task
    may wait, which came in whole milliseconds."""
    if isinstance(expires_at, float | int) and isinstance(submitted_at, float | int):
        return round(expires_at - submitted_at, 3)
    return expires_at
