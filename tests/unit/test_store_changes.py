"""NetChanges, a batch of journal commands reduced to what SQLite must do, and the store under
random journals and batchings against a simple model (tests.store_helpers.Model)."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from msgspec.structs import replace

from broker.core.journal import (
    Change,
    ForgetAnswer,
    ForgetDeadLetter,
    SaveAnswer,
    SaveAttempts,
    SaveDeadLetter,
    SaveTask,
)
from broker.store import Store, schema
from broker.store.changes import NetChanges
from tests.store_helpers import OFFSET, TIMES, Model, answer, dead, journals, load, save

PUT_RESULT = "INSERT OR REPLACE INTO results VALUES (NULL,?,?,?,?,?,?)"


def net(changes: list[Change]) -> NetChanges:
    reduced = NetChanges()
    for change in changes:
        reduced.add(change)
    return reduced


class Statements:
    """A connection stand-in that records what `NetChanges.write` asks of SQLite."""

    def __init__(self) -> None:
        self.run: list[tuple[str, list[tuple[object, ...]]]] = []

    def executemany(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        self.run.append((sql, list(rows)))


def statements(changes: list[Change]) -> list[tuple[str, list[tuple[object, ...]]]]:
    recorder = Statements()
    net(changes).write(recorder, OFFSET)  # type: ignore[arg-type]
    return recorder.run


def test_saved_and_answered_in_one_batch_leaves_only_the_answer() -> None:
    changes: list[Change] = [save("a"), SaveAttempts("a", 1), SaveAnswer(answer("a"), 11.0)]
    assert net(changes).tasks == {}  # never inserted, so nothing to delete either
    assert [sql for sql, _ in statements(changes)] == [PUT_RESULT]


def test_a_task_answered_in_an_earlier_batch_is_deleted_once() -> None:
    run = statements([SaveAttempts("a", 2), SaveAnswer(answer("a"), 1.0)])
    assert run[0] == ("DELETE FROM tasks WHERE task_id = ?", [("a",)])
    assert [sql for sql, _ in run[1:]] == [PUT_RESULT]


def test_attempts_of_a_task_saved_in_the_batch_go_into_its_row() -> None:
    run = statements([save("a", 3, at=1.0), SaveAttempts("a", 2), SaveAttempts("b", 4)])
    put, update = run[0][1], run[1]
    assert [(row[0], row[2], row[3], row[4]) for row in put] == [("a", 3, 2, OFFSET + 1.0)]
    assert update == ("UPDATE tasks SET attempts = ? WHERE task_id = ?", [(4, "b")])


def test_a_replay_answered_earlier_in_the_batch_keeps_the_delete_and_the_insert() -> None:
    """Answered (its row deleted), replayed and answered again in one batch: the row from
    the earlier batch must still go."""
    changes: list[Change] = [
        SaveAnswer(answer("a", 1), 1.0),
        ForgetAnswer("a"),
        save("a", 5),
        SaveAnswer(answer("a"), 2.0),
    ]
    assert net(changes).tasks == {"a": None}
    replayed_only = net(changes[:3])
    assert replayed_only.tasks == {"a": changes[2]} and "a" not in replayed_only.new


def test_forgetting_every_dead_letter_drops_the_earlier_ones_of_the_batch() -> None:
    changes: list[Change] = [SaveDeadLetter(dead("a")), ForgetDeadLetter(None)]
    changes += [SaveDeadLetter(dead("b")), ForgetDeadLetter("c"), ForgetDeadLetter("b")]
    reduced = net(changes)
    assert reduced.clear_dead_letters and reduced.dead_letters == {}  # c and b: no row left
    assert statements(changes) == [("DELETE FROM dead_letters", [()])]


def test_only_journal_commands_are_accepted() -> None:
    with pytest.raises(TypeError, match="not a journal command"):
        NetChanges().add(answer("a"))  # type: ignore[arg-type]


def test_specs_are_encoded_only_for_rows_that_are_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[str] = []
    real = NetChanges.write.__globals__["_ENCODE_SPEC"]

    def counting(spec: object) -> bytes:
        encoded.append(spec.task_id)  # type: ignore[attr-defined]
        return real(spec)  # type: ignore[no-any-return]

    monkeypatch.setitem(NetChanges.write.__globals__, "_ENCODE_SPEC", counting)
    statements([save("a"), save("b"), SaveAnswer(answer("a"), 1.0)])
    assert encoded == ["b"]


# ------------------------------------------------------------------- model-based property


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journals(), st.lists(st.integers(1, 12), min_size=1), st.data())
def test_any_batching_gives_back_what_the_model_holds(
    journal: list[Change], sizes: list[int], data: st.DataObject
) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "broker.db")
        try:
            start = 0
            for size in sizes * len(journal):
                if start >= len(journal):
                    break
                batch = journal[start : start + size]
                start += size
                store.apply(batch, OFFSET)
                for change in batch:
                    model.apply(change)
                if data.draw(st.booleans(), label="prune"):
                    older, keep = data.draw(TIMES), data.draw(st.none() | st.integers(0, 3))
                    store.prune_results(older, OFFSET, keep=keep)
                    model.prune(older, keep)
            # next_seq depends on the batching (a task saved and answered in one batch is
            # never written); what a restart needs is that it orders after every pending
            # task.
            restored, expected = load(store), model.restored()
            assert replace(restored, next_seq=0) == replace(expected, next_seq=0)
            assert all(t.seq < restored.next_seq for t in restored.pending)
            assert restored.next_seq <= expected.next_seq
        finally:
            store.close()


@settings(max_examples=60, deadline=None)
@given(journals())
def test_a_batch_runs_at_most_one_statement_per_kind(journal: list[Change]) -> None:
    """The point of NetChanges: one executemany per kind of statement, whatever the batch,
    and no row written for a task saved and answered in it."""
    run = statements(journal)
    kinds = [sql for sql, _ in run]
    assert len(kinds) == len(set(kinds)) <= 9
    saved_and_answered = _saved_then_answered(journal)
    written = {row[0] for sql, rows in run if sql.startswith("INSERT OR REPLACE INTO tasks ")
               for row in rows}  # fmt: skip
    assert not written & saved_and_answered
    with sqlite3.connect(":memory:") as conn:  # every statement is valid SQL for the schema
        for ddl in schema.TABLES.values():
            conn.execute(ddl)
        conn.execute("INSERT INTO meta VALUES ('next_seq', 0)")
        net(journal).write(conn, OFFSET)
    conn.close()


def _saved_then_answered(journal: list[Change]) -> set[str]:
    """Task ids whose last SaveTask in `journal` is followed by a SaveAnswer."""
    last: dict[str, str] = {}
    for change in journal:
        if isinstance(change, SaveTask):
            last[change.spec.task_id] = "saved"
        elif isinstance(change, SaveAnswer) and last.get(change.answer.task_id) == "saved":
            last[change.answer.task_id] = "answered"
    return {task_id for task_id, state in last.items() if state == "answered"}
