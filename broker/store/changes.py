"""NetChanges: a batch of journal commands reduced to what SQLite must do.

A later command on a row overrides an earlier one, so work that cancels out (a task saved and
answered in the same batch) never reaches SQLite; `write` then runs one executemany per kind
of statement. Specs are encoded (msgspec MessagePack) only for the rows that are written.
Used by `broker.store.sqlite.Store.apply`, inside its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from broker.core.deadletters import DeadLetter
from broker.core.journal import (
    Change,
    ForgetAnswer,
    ForgetDeadLetter,
    ForgetNode,
    SaveAnswer,
    SaveAttempts,
    SaveDeadLetter,
    SaveNode,
    SaveTask,
)
from broker.protocol import ErrorInfo

V = TypeVar("V")

_PUT_TASK = "INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?)"
_PUT_RESULT = "INSERT OR REPLACE INTO results VALUES (NULL,?,?,?,?,?,?)"
_PUT_DEAD_LETTER = "INSERT OR REPLACE INTO dead_letters VALUES (NULL,?,?,?,?,?,?)"
_SET_ATTEMPTS = "UPDATE tasks SET attempts = ? WHERE task_id = ?"
_PUT_NODE = "INSERT OR REPLACE INTO nodes VALUES (?,?,?)"
_FORGET_NODE = "DELETE FROM nodes WHERE name = ? AND host = ? AND pid = ?"
_SET_NEXT_SEQ = "UPDATE meta SET value = max(value, ?) WHERE key = 'next_seq'"
_ENCODE_SPEC = msgspec.msgpack.Encoder().encode
_ENCODE_ERROR = msgspec.json.Encoder().encode


class NetChanges:
    """The net effect of a batch of commands per table and task id. The tables are
    independent: only the order of the commands on one row matters, and the order in which
    answers and dead letters were saved (a row saved again moves last)."""

    def __init__(self) -> None:
        self.tasks: dict[str, SaveTask | None] = {}  # None: delete the row
        self.new: set[str] = set()  # saved in this batch, without a row written before
        self.attempts: dict[str, int] = {}  # for the rows of `tasks` and of earlier batches
        self.answers: dict[str, SaveAnswer | None] = {}  # in the order they were saved
        self.dead_letters: dict[str, DeadLetter | None] = {}  # in failure order
        self.clear_dead_letters = False
        self.nodes: dict[tuple[str, str, int], bool] = {}  # True: save, False: forget

    def add(self, change: Change) -> None:
        handler = _ADD.get(type(change))
        if handler is None:
            raise TypeError(f"not a journal command: {change!r}")
        handler(self, change)

    def _save_task(self, change: SaveTask) -> None:
        task_id = change.spec.task_id
        if task_id not in self.tasks:
            # A task id is saved again only once answered, so it has no row, unless this
            # batch has just answered it (then its row's DELETE must stay).
            self.new.add(task_id)
        self.tasks[task_id] = change
        self.attempts.pop(task_id, None)

    def _save_attempts(self, change: SaveAttempts) -> None:
        if self.tasks.get(change.task_id, change) is not None:  # not deleted in this batch
            self.attempts[change.task_id] = change.attempts

    def _save_answer(self, change: SaveAnswer) -> None:
        task_id = change.answer.task_id
        if task_id in self.new:  # saved and answered in this batch: SQLite never saw it
            self.new.discard(task_id)
            del self.tasks[task_id]
        else:
            self.tasks[task_id] = None
        self.attempts.pop(task_id, None)
        self.answers.pop(task_id, None)  # saved again: the newest answer goes last
        self.answers[task_id] = change

    def _forget_answer(self, change: ForgetAnswer) -> None:
        self.answers[change.task_id] = None

    def _save_dead_letter(self, change: SaveDeadLetter) -> None:
        task_id = change.entry.spec.task_id
        self.dead_letters.pop(task_id, None)
        self.dead_letters[task_id] = change.entry

    def _forget_dead_letter(self, change: ForgetDeadLetter) -> None:
        if change.task_id is None:
            self.dead_letters.clear()
            self.clear_dead_letters = True
        elif self.clear_dead_letters:  # no row left but those saved after the clear
            self.dead_letters.pop(change.task_id, None)
        else:
            self.dead_letters[change.task_id] = None

    def _save_node(self, change: SaveNode) -> None:
        self.nodes[(change.name, change.host, change.pid)] = True

    def _forget_node(self, change: ForgetNode) -> None:
        self.nodes[(change.name, change.host, change.pid)] = False

    def write(self, conn: sqlite3.Connection, wall_offset: float) -> None:
        """Run the statements, in an order in which each row ends as its last command
        left it (a DELETE before the INSERT of the same key)."""
        tasks, gone_tasks = _split(self.tasks)
        answers, gone_answers = _split(self.answers)
        entries, gone_entries = _split(self.dead_letters)
        attempts = self.attempts
        steps = [
            ("DELETE FROM tasks WHERE task_id = ?", gone_tasks),
            (_PUT_TASK, [_task_row(t, attempts, wall_offset) for t in tasks]),
            (_SET_ATTEMPTS, [(n, i) for i, n in attempts.items() if i not in self.tasks]),
            ("DELETE FROM results WHERE task_id = ?", gone_answers),
            (_PUT_RESULT, [_result_row(a, wall_offset) for a in answers]),
            ("DELETE FROM dead_letters", [()] if self.clear_dead_letters else []),
            ("DELETE FROM dead_letters WHERE task_id = ?", gone_entries),
            (_PUT_DEAD_LETTER, [_dead_letter_row(e, wall_offset) for e in entries]),
            # Only pending rows need their order kept past a restart.
            (_SET_NEXT_SEQ, [(max(t.seq for t in tasks) + 1,)] if tasks else []),
            (_FORGET_NODE, [node for node, saved in self.nodes.items() if not saved]),
            (_PUT_NODE, [node for node, saved in self.nodes.items() if saved]),
        ]
        for sql, rows in steps:
            if rows:  # an empty executemany still costs a statement reset
                conn.executemany(sql, rows)


_ADD: dict[type[Any], Callable[[NetChanges, Any], None]] = {
    SaveTask: NetChanges._save_task,
    SaveAttempts: NetChanges._save_attempts,
    SaveAnswer: NetChanges._save_answer,
    ForgetAnswer: NetChanges._forget_answer,
    SaveDeadLetter: NetChanges._save_dead_letter,
    ForgetDeadLetter: NetChanges._forget_dead_letter,
    SaveNode: NetChanges._save_node,
    ForgetNode: NetChanges._forget_node,
}


def _split(rows: dict[str, V | None]) -> tuple[list[V], list[tuple[str]]]:
    """(the values to write, in order; (task_id,) of each row to delete)."""
    put = [value for value in rows.values() if value is not None]
    return put, [(task_id,) for task_id, value in rows.items() if value is None]


def _task_row(t: SaveTask, attempts: dict[str, int], wall_offset: float) -> tuple[Any, ...]:
    spec = t.spec
    return (
        spec.task_id,
        _ENCODE_SPEC(spec),
        t.seq,
        attempts.get(spec.task_id, 0),
        t.submitted_at + wall_offset,
    )


def _result_row(s: SaveAnswer, wall_offset: float) -> tuple[Any, ...]:
    a = s.answer
    return (a.task_id, a.exit_code, a.result, _error_json(a.error), a.attempts, s.at + wall_offset)


def _dead_letter_row(e: DeadLetter, wall_offset: float) -> tuple[Any, ...]:
    spec = e.spec
    error = _error_json(e.error)
    return (
        spec.task_id,
        _ENCODE_SPEC(spec),
        e.attempts,
        e.exit_code,
        error,
        e.failed_at + wall_offset,
    )


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else _ENCODE_ERROR(error).decode()
