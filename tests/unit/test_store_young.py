"""YoungTasks: new tasks held back from SQLite by the store's writer for a moment. What the
store ends up holding is what it holds without them, for any journal, batching and timing;
a task answered while held costs SQLite no row."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from msgspec.structs import replace

from broker.core.journal import Change, ForgetAnswer, SaveAnswer, SaveAttempts, SaveTask
from broker.store import Store
from broker.store.changes import NetChanges
from broker.store.young import YoungTasks
from tests.store_helpers import OFFSET, Model, answer, journals, load, save


def test_a_task_answered_while_held_reaches_sqlite_with_its_answer_and_leaves_no_row() -> None:
    young = YoungTasks(hold=0.1)
    assert young.take([save("a"), SaveAttempts("a", 1)], now=1.0) == []
    assert len(young) == 1 and young.next_due() == 1.1
    out = young.take([SaveAnswer(answer("a"), 11.0)], now=1.05)
    assert out == [save("a"), SaveAnswer(answer("a"), 11.0)]
    reduced = NetChanges()
    for change in out:
        reduced.add(change)
    assert reduced.tasks == {}  # no INSERT, no DELETE: only the answer is written
    assert len(young) == 0 and young.next_due() is None


def test_a_task_still_pending_when_its_moment_is_over_is_written_as_it_stands() -> None:
    young = YoungTasks(hold=0.1)
    young.take([save("a"), save("b")], now=1.0)
    young.take([SaveAttempts("a", 1), SaveAttempts("a", 2), save("c")], now=1.05)
    assert young.due(1.09) == []
    assert young.due(1.1) == [save("a"), SaveAttempts("a", 2), save("b")]
    assert young.take([ForgetAnswer("x")], now=1.2) == [ForgetAnswer("x"), save("c")]


def test_changes_of_tasks_not_held_pass_through_in_order() -> None:
    young = YoungTasks(hold=0.1)
    changes: list[Change] = [SaveAttempts("old", 3), SaveAnswer(answer("old"), 2.0)]
    assert young.take(changes, now=1.0) == changes


def test_all_gives_every_held_task_and_no_hold_holds_nothing() -> None:
    young = YoungTasks(hold=0.1)
    young.take([save("a"), SaveAttempts("a", 1), save("b")], now=1.0)
    assert young.all() == [save("a"), SaveAttempts("a", 1), save("b")]
    assert len(young) == 0
    unheld = YoungTasks(hold=0.0)
    assert unheld.take([save("a"), SaveAttempts("a", 1)], now=1.0) == [
        save("a"),
        SaveAttempts("a", 1),
    ]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    journals(),
    st.lists(st.integers(1, 8), min_size=1),
    st.lists(st.integers(0, 6).map(lambda n: n / 40), min_size=1),  # seconds between batches
    st.sampled_from([0.0, 0.05, 0.1]),
    st.data(),
)
def test_the_store_ends_as_the_journal_says_whatever_is_held_and_when(
    journal: list[Change],
    sizes: list[int],
    gaps: list[float],
    hold: float,
    data: st.DataObject,
) -> None:
    """Batches of the journal come at random moments; now and then the writer's timer
    writes what is due, or a batch asks for everything held (`flush`); at the end the rest
    is written. The store then holds what the model of the whole journal holds."""
    young, model, now = YoungTasks(hold), Model(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "broker.db")
        try:
            start, turn = 0, 0
            while start < len(journal):
                batch = journal[start : start + sizes[turn % len(sizes)]]
                start += len(batch)
                now += gaps[turn % len(gaps)]
                turn += 1
                out = young.take(batch, now)
                if data.draw(st.booleans(), label="flush"):
                    out += young.all()
                store.apply(out, OFFSET)
                if data.draw(st.booleans(), label="timer"):
                    now += hold
                    store.apply(young.due(now), OFFSET)
                for change in batch:
                    model.apply(change)
            store.apply(young.all(), OFFSET)
            restored, expected = load(store), model.restored()
            assert replace(restored, next_seq=0) == replace(expected, next_seq=0)
            assert all(t.seq < restored.next_seq for t in restored.pending)
        finally:
            store.close()


def test_a_journal_of_tasks_answered_while_held_writes_no_task_row() -> None:
    young = YoungTasks(hold=0.1)
    out: list[Change] = []
    for n in range(50):
        out += young.take([save(f"t{n}", n), SaveAttempts(f"t{n}", 1)], now=n / 1000)
        out += young.take([SaveAnswer(answer(f"t{n}"), 1.0)], now=n / 1000 + 0.0005)
    assert sum(type(c) is SaveTask for c in out) == 50  # each beside its answer
    reduced = NetChanges()
    for change in out:
        reduced.add(change)
    assert reduced.tasks == {} and len(reduced.answers) == 50
