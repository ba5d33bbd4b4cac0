"""NetChanges: a batch of journal changes reduced to what SQLite must do.

A later change to a row overrides an earlier one, so work that cancels out (a task accepted
and finished in the same batch) never reaches SQLite; `write` then runs one executemany per
kind of statement. Used by `broker.store.Store.apply`, inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import fields, replace
from operator import attrgetter
from typing import Any, TypeVar

import orjson

from broker import journal as j
from broker.deadletters import DeadLetter
from broker.protocol import ErrorInfo

V = TypeVar("V")

_TASK_FIELDS = attrgetter(*(f.name for f in fields(j.StoredTask)))
_PUT_TASK = "INSERT OR REPLACE INTO tasks VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9+?11,?10+?11)"
_PUT_RESULT = "INSERT OR REPLACE INTO results VALUES (NULL,?,?,?,?,?,?+?)"
_PUT_DEAD_LETTER = "INSERT OR REPLACE INTO dead_letters VALUES (NULL,?,?,?,?,?,?,?,?,?,?+?)"
_SET_ATTEMPTS = "UPDATE tasks SET attempts = ? WHERE task_id = ?"
_SET_NEXT_SEQ = "UPDATE meta SET value = max(value, ?) WHERE key = 'next_seq'"


class NetChanges:
    """The net effect of a batch of changes per table and task id: a later change to a row
    overrides an earlier one, so work that cancels out (a task accepted and finished in the
    same batch) never reaches SQLite. The tables are independent: only the order of the
    changes to one row matters, and the order in which results and dead letters were added."""

    def __init__(self) -> None:
        self.tasks: dict[str, j.StoredTask | None] = {}  # None: delete the row
        self.new: set[str] = set()  # accepted in this batch: no row written yet
        self.attempts: dict[str, int] = {}  # of rows written by earlier batches
        self.results: dict[str, j.Finished | None] = {}  # in the order they finished
        self.dead_letters: dict[str, DeadLetter | None] = {}  # in failure order
        self.clear_dead_letters = False

    def add(self, change: j.Change) -> None:
        handler = _ADD.get(type(change))
        if handler is None:
            raise TypeError(f"not a journal change: {change!r}")
        handler(self, change)

    def _accepted(self, change: j.Accepted) -> None:
        task = change.task
        if task.task_id not in self.tasks:
            # A task id is accepted only when not pending, so it has no row, unless this
            # batch has just answered it (then its row's DELETE must stay).
            self.new.add(task.task_id)
        self.tasks[task.task_id] = task
        self.attempts.pop(task.task_id, None)

    def _attempted(self, change: j.Attempted) -> None:
        if change.task_id not in self.tasks:
            self.attempts[change.task_id] = change.attempts
        elif (task := self.tasks[change.task_id]) is not None:
            self.tasks[change.task_id] = replace(task, attempts=change.attempts)

    def _finished(self, change: j.Finished) -> None:
        task_id = change.answer.task_id
        if task_id in self.new:  # accepted and answered in this batch: SQLite never saw it
            self.new.discard(task_id)
            self.tasks.pop(task_id, None)
        else:
            self.tasks[task_id] = None
        self.attempts.pop(task_id, None)
        self.results.pop(task_id, None)  # added again: the newest answer goes last
        self.results[task_id] = change

    def _forgotten(self, change: j.ResultForgotten) -> None:
        self.results[change.task_id] = None

    def _dead_lettered(self, change: j.DeadLettered) -> None:
        self.dead_letters.pop(change.entry.task_id, None)
        self.dead_letters[change.entry.task_id] = change.entry

    def _dead_letter_removed(self, change: j.DeadLetterRemoved) -> None:
        if change.task_id is not None:
            self.dead_letters[change.task_id] = None
        else:
            self.dead_letters.clear()
            self.clear_dead_letters = True

    def write(self, conn: sqlite3.Connection, wall_offset: float) -> None:
        tasks, gone_tasks = _split(self.tasks)
        results, gone_results = _split(self.results)
        entries, gone_entries = _split(self.dead_letters)
        steps = [
            ("DELETE FROM tasks WHERE task_id = ?", gone_tasks),
            (_PUT_TASK, [(*_TASK_FIELDS(t), wall_offset) for t in tasks]),
            (_SET_ATTEMPTS, [(n, task_id) for task_id, n in self.attempts.items()]),
            ("DELETE FROM results WHERE task_id = ?", gone_results),
            (_PUT_RESULT, [_result_row(f, wall_offset) for f in results]),
            ("DELETE FROM dead_letters", [()] if self.clear_dead_letters else []),
            ("DELETE FROM dead_letters WHERE task_id = ?", gone_entries),
            (_PUT_DEAD_LETTER, [_dead_letter_row(e, wall_offset) for e in entries]),
            # Only pending rows need their order kept past a restart.
            (_SET_NEXT_SEQ, [(max(t.seq for t in tasks) + 1,)] if tasks else []),
        ]
        for sql, rows in steps:
            if rows:  # an empty executemany still costs a statement reset
                conn.executemany(sql, rows)


_ADD: dict[type[Any], Callable[[NetChanges, Any], None]] = {
    j.Accepted: NetChanges._accepted,
    j.Attempted: NetChanges._attempted,
    j.Finished: NetChanges._finished,
    j.ResultForgotten: NetChanges._forgotten,
    j.DeadLettered: NetChanges._dead_lettered,
    j.DeadLetterRemoved: NetChanges._dead_letter_removed,
}


def _split(rows: dict[str, V | None]) -> tuple[list[V], list[tuple[str]]]:
    """(the values to write, in order; (task_id,) of each row to delete)."""
    put = [value for value in rows.values() if value is not None]
    return put, [(task_id,) for task_id, value in rows.items() if value is None]


def _result_row(f: j.Finished, wall_offset: float) -> tuple[Any, ...]:
    a = f.answer
    return (a.task_id, a.exit_code, a.payload, _error_json(a.error), a.attempts, f.at, wall_offset)


def _dead_letter_row(e: DeadLetter, wall_offset: float) -> tuple[Any, ...]:
    error = _error_json(e.error)
    head = (e.task_id, e.function, e.payload, e.priority, e.retries, e.timeout, e.attempts)
    return (*head, e.exit_code, error, e.failed_at, wall_offset)


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else orjson.dumps(error.to_json()).decode()
