"""The SQLite store on real files: every journal command, batching, reopening, times, pruning
and a writer killed with SIGKILL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from broker.core.events import Restored
from broker.core.journal import (
    Change,
    ForgetAnswer,
    ForgetDeadLetter,
    ForgetNode,
    PendingTask,
    SaveAnswer,
    SaveAttempts,
    SaveDeadLetter,
    SaveNode,
)
from broker.protocol import TaskSpec
from broker.store import SCHEMA_VERSION, Store, StoreError
from tests.store_helpers import (
    OFFSET,
    answer,
    dead,
    load,
    pending,
    save,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "broker.db")
    yield opened
    opened.close()


# ------------------------------------------------------------------------ journal commands


def test_a_new_store_is_empty(store: Store) -> None:
    assert load(store) == Restored([], [], [], 0)


def test_saved_tasks_come_back_whole_in_submission_order(store: Store) -> None:
    later = save("b", seq=7, priority=9, retries=None, queue_timeout=None, task_timeout=None)
    store.apply([later, save("a", seq=3)], OFFSET)
    expected = [pending("a", seq=3), PendingTask(later.spec, 7, 10.25)]
    assert load(store) == Restored(expected, [], [], 8)


def test_the_spec_is_stored_whole_as_msgpack(store: Store, tmp_path: Path) -> None:
    """A new task option is a field of TaskSpec, and needs no new column."""
    saved = save("a", priority=0, retries=100, queue_timeout=0.001, task_timeout=604800.0)
    store.apply([saved], OFFSET)
    store.close()
    with sqlite3.connect(tmp_path / "broker.db") as conn:
        (blob,) = conn.execute("SELECT spec FROM tasks").fetchone()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert msgspec.msgpack.decode(blob, type=TaskSpec) == saved.spec
    assert version == (SCHEMA_VERSION,) == (3,)
    reopened = Store.open(tmp_path / "broker.db")
    try:
        assert load(reopened).pending[0].spec == saved.spec
    finally:
        reopened.close()


def test_save_attempts_updates_a_task_written_before_or_in_the_same_batch(store: Store) -> None:
    store.apply([save("a", 0)], OFFSET)
    store.apply([SaveAttempts("a", 1), save("b", 1), SaveAttempts("b", 2)], OFFSET)
    store.apply([SaveAttempts("gone", 3)], OFFSET)  # no longer pending: nothing to update
    assert load(store).pending == [pending("a", 0, attempts=1), pending("b", 1, attempts=2)]


def test_save_answer_removes_the_task_and_keeps_its_answer(store: Store) -> None:
    store.apply([save("a", 0), save("b", 1)], OFFSET)
    store.apply([SaveAnswer(answer("a", 1, attempts=3), 30.75)], OFFSET)
    restored = load(store)
    assert restored.pending == [pending("b", 1)]
    assert restored.answers == [(answer("a", 1, attempts=3), 30.75)]


def test_next_seq_stays_above_every_task_still_pending(store: Store) -> None:
    store.apply([save("a", 4), save("b", 7)], OFFSET)
    store.apply([SaveAnswer(answer("b"), 11.0)], OFFSET)
    assert load(store).next_seq == 8  # b's seq was written with it
    store.apply([save("c", 9), SaveAnswer(answer("c"), 12.0)], OFFSET)
    assert load(store).next_seq == 8  # c never reached SQLite; a (4) still orders below 8


def test_next_seq_survives_the_tasks_that_had_it(store: Store) -> None:
    store.apply([save("a", 41)], OFFSET)
    store.apply([SaveAnswer(answer("a"), 1.0)], OFFSET)
    assert load(store).next_seq == 42
    store.apply([save("b", 7)], OFFSET)  # a lower seq never moves it back
    assert load(store).next_seq == 42


def test_answers_stay_in_saving_order_and_a_new_answer_moves_last(store: Store) -> None:
    store.apply([SaveAnswer(answer("a"), 1.0), SaveAnswer(answer("b"), 2.0)], OFFSET)
    store.apply([SaveAnswer(answer("c"), 3.0), SaveAnswer(answer("a", 1), 4.0)], OFFSET)
    store.apply([SaveAnswer(answer("b", 1), 5.0), SaveAnswer(answer("c", 1), 6.0)], OFFSET)
    assert [(a.task_id, at) for a, at in load(store).answers] == [
        ("a", 4.0), ("b", 5.0), ("c", 6.0)
    ]  # fmt: skip


def test_forget_answer_then_answered_again_in_one_batch(store: Store) -> None:
    store.apply([SaveAnswer(answer("a"), 1.0), SaveAnswer(answer("b"), 2.0)], OFFSET)
    replay: list[Change] = [ForgetAnswer("a"), save("a", 5)]
    store.apply([*replay, SaveAnswer(answer("a", 1), 3.0), ForgetAnswer("b")], OFFSET)
    assert load(store).answers == [(answer("a", 1), 3.0)]
    assert load(store).pending == []


def test_dead_letters_forgotten_one_or_all_and_saved_again(store: Store) -> None:
    store.apply([SaveDeadLetter(dead(i)) for i in "abc"], OFFSET)
    store.apply([ForgetDeadLetter("b"), SaveDeadLetter(dead("a", 21.0))], OFFSET)
    assert load(store).dead_letters == [dead("c"), dead("a", 21.0)]
    batch: list[Change] = [ForgetDeadLetter(None), SaveDeadLetter(dead("d")), ForgetDeadLetter("x")]
    store.apply(batch, OFFSET)
    assert load(store).dead_letters == [dead("d")]
    store.apply([SaveDeadLetter(dead("e")), ForgetDeadLetter(None)], OFFSET)
    assert load(store).dead_letters == []


def test_dead_letters_keep_their_spec_whole(store: Store) -> None:
    entry = dead("a", priority=0, retries=3, queue_timeout=None, task_timeout=0.25)
    store.apply([SaveDeadLetter(entry), SaveDeadLetter(dead("b", retries=None))], OFFSET)
    assert load(store).dead_letters == [entry, dead("b", retries=None)]


def test_a_replay_forgets_the_dead_letter_and_saves_the_task_again(store: Store) -> None:
    failed: list[Change] = [save("a"), SaveAnswer(answer("a", 124), 2.0)]
    store.apply([*failed, SaveDeadLetter(dead("a"))], OFFSET)
    replay: list[Change] = [ForgetDeadLetter("a"), ForgetAnswer("a"), save("a", 1)]
    store.apply(replay, OFFSET)
    assert load(store) == Restored([pending("a", 1)], [], [], 2)


def test_node_processes_are_saved_and_forgotten(store: Store) -> None:
    """The processes a restarted broker waits for (protocol.md 7.3): the last command on one
    process in a batch wins."""
    store.apply([SaveNode("a", "h", 1), SaveNode("b", "h", 2), ForgetNode("a", "h", 1)], OFFSET)
    store.apply([SaveNode("c", "", 3), ForgetNode("b", "h", 2), SaveNode("b", "h", 2)], OFFSET)
    assert sorted(load(store).nodes) == [("b", "h", 2), ("c", "", 3)]
    store.apply([ForgetNode("c", "", 3)], OFFSET)
    assert load(store).nodes == [("b", "h", 2)]


def test_times_convert_between_clocks_and_past_ones_stop_at_now(store: Store) -> None:
    store.apply([save("a", at=50.0)], OFFSET)
    store.apply([SaveAnswer(answer("b"), 60.0), SaveDeadLetter(dead("c", 70.0))], OFFSET)
    # Another process: its monotonic clock reads 1000 s less for the same Unix time.
    restored = store.load(OFFSET + 1000, now=-945.0)
    assert restored.pending == [pending("a", at=-950.0)]
    assert restored.answers == [(answer("b"), -945.0)]  # -940 would be in the future
    assert restored.dead_letters == [dead("c", -945.0)]


def test_reopening_gives_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    store = Store.open(path)
    store.apply([save("a", 0), save("b", 1), SaveAnswer(answer("b"), 3.0)], OFFSET)
    store.apply([SaveDeadLetter(dead("c")), SaveAttempts("a", 2)], OFFSET)
    before = load(store)
    store.close()
    reopened = Store.open(path, durable_sync=True)
    try:
        assert load(reopened) == before
        assert before.pending and before.answers and before.dead_letters
    finally:
        reopened.close()


def test_a_failed_batch_records_none_of_its_commands(store: Store) -> None:
    store.apply([save("a", 0)], OFFSET)
    broken = SaveAnswer(msgspec.structs.replace(answer("b"), result=None), 1.0)  # NOT NULL
    with pytest.raises(StoreError, match=r"NOT NULL .*\(recording changes\); this is a zbroker"):
        store.apply([SaveAnswer(answer("a"), 1.0), broken], OFFSET)  # a's DELETE ran first
    assert load(store) == Restored([pending("a", 0)], [], [], 1)
    store.apply([SaveAnswer(answer("a"), 1.0)], OFFSET)  # and the store still works
    assert load(store).answers == [(answer("a"), 1.0)]


# ------------------------------------------------------------------------------ pruning


def test_prune_results_forgets_old_answers_oldest_first(store: Store) -> None:
    store.apply([SaveAnswer(answer(str(i)), float(i)) for i in range(10)], OFFSET)
    assert store.prune_results(3.0, OFFSET) == 4  # saved at 0, 1, 2 and 3
    assert [a.task_id for a, _ in load(store).answers] == [str(i) for i in range(4, 10)]
    assert store.prune_results(3.0, OFFSET, keep=2) == 4
    assert [a.task_id for a, _ in load(store).answers] == ["8", "9"]
    assert store.prune_results(100.0, OFFSET) == 2
    assert store.prune_results(100.0, OFFSET, keep=5) == 0


def test_prune_results_keeps_the_answers_pending_tasks_need_as_inputs(store: Store) -> None:
    store.apply([SaveAnswer(answer(str(i)), float(i)) for i in range(10)], OFFSET)
    assert store.prune_results(3.0, OFFSET, pinned={"1", "x"}) == 3  # 0, 2 and 3
    assert store.prune_results(100.0, OFFSET, keep=2, pinned=["1", "5"]) == 5
    assert [a.task_id for a, _ in load(store).answers] == ["1", "5"]
    assert store.prune_results(100.0, OFFSET) == 2


def test_trim_dead_letters_keeps_the_newest(store: Store) -> None:
    store.apply([SaveDeadLetter(dead(str(i))) for i in range(5)], OFFSET)
    assert store.trim_dead_letters(10) == 0
    assert store.trim_dead_letters(2) == 3
    assert [e.spec.task_id for e in load(store).dead_letters] == ["3", "4"]


# ------------------------------------------------------------------------------ kill -9
