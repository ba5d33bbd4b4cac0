"""The durable store on real SQLite files: every change kind, batching, reopening, refusals,
a writer killed with SIGKILL, and random change sequences against an in-memory model."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from broker.deadletters import DeadLetter
from broker.journal import (
    Accepted,
    Attempted,
    Change,
    DeadLettered,
    DeadLetterRemoved,
    Finished,
    ResultForgotten,
    StoredTask,
)
from broker.protocol import ErrorInfo, TaskCompleted
from broker.store import NetChanges, Snapshot, Store, StoreError

# Unix time ~2023 plus times that are sums of powers of two: the round trip is exact.
OFFSET = 1_700_000_000.0
FAR = 1e12  # a `now` later than every time in these tests


def task(task_id: str, seq: int = 0, **changes: Any) -> StoredTask:
    return replace(StoredTask(task_id, "f", b"[1,2]", 5, seq, 2, 1.5, 0, 10.25, None), **changes)


def answer(task_id: str, code: int = 0, attempts: int = 1) -> TaskCompleted:
    error = None if code == 0 else ErrorInfo("ValueError", f"bad {task_id}")
    return TaskCompleted(task_id, code, b"42" if code == 0 else b"null", error, attempts)


def dead(task_id: str, at: float = 20.5) -> DeadLetter:
    error = ErrorInfo("Timeout", "took too long")
    return DeadLetter(task_id, "f", b'["x"]', 7, 1, None, 2, 124, error, at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "broker.db")
    yield opened
    opened.close()


def load(store: Store, now: float = FAR) -> Snapshot:
    return store.load(OFFSET, now)


# ------------------------------------------------------------------------ change kinds


def test_a_new_store_is_empty(store: Store) -> None:
    assert load(store) == Snapshot([], [], [], 0)


def test_accepted_tasks_come_back_in_submission_order(store: Store) -> None:
    later = task("b", seq=7, expires_at=99.5, timeout=None, priority=9)
    store.apply([Accepted(later), Accepted(task("a", seq=3))], OFFSET)
    assert load(store) == Snapshot([task("a", seq=3), later], [], [], 8)


def test_attempted_updates_a_task_written_before_or_in_the_same_batch(store: Store) -> None:
    store.apply([Accepted(task("a", 0))], OFFSET)
    store.apply([Attempted("a", 1), Accepted(task("b", 1)), Attempted("b", 2)], OFFSET)
    store.apply([Attempted("gone", 3)], OFFSET)  # no longer pending: nothing to update
    assert load(store).tasks == [task("a", 0, attempts=1), task("b", 1, attempts=2)]


def test_finished_removes_the_task_and_keeps_its_answer(store: Store) -> None:
    store.apply([Accepted(task("a", 0)), Accepted(task("b", 1))], OFFSET)
    store.apply([Finished(answer("a", 1, attempts=3), 30.75)], OFFSET)
    snapshot = load(store)
    assert snapshot.tasks == [task("b", 1)]
    assert snapshot.results == [(answer("a", 1, attempts=3), 30.75)]


def test_accepted_and_finished_in_one_batch_leaves_only_the_answer(store: Store) -> None:
    changes: list[Change] = [Accepted(task("a")), Attempted("a", 1), Finished(answer("a"), 11.0)]
    net = NetChanges()
    for change in changes:
        net.add(change)
    assert net.tasks == {}  # never inserted, so nothing to delete either
    store.apply(changes, OFFSET)
    assert load(store) == Snapshot([], [(answer("a"), 11.0)], [], 0)


def test_next_seq_stays_above_every_task_still_pending(store: Store) -> None:
    store.apply([Accepted(task("a", 4)), Accepted(task("b", 7))], OFFSET)
    store.apply([Finished(answer("b"), 11.0)], OFFSET)
    assert load(store).next_seq == 8  # b's seq was written with it
    store.apply([Accepted(task("c", 9)), Finished(answer("c"), 12.0)], OFFSET)
    assert load(store).next_seq == 8  # c never reached SQLite; a (4) still orders below 8


def test_answers_stay_in_finishing_order_and_a_new_answer_moves_last(store: Store) -> None:
    store.apply([Finished(answer("a"), 1.0), Finished(answer("b"), 2.0)], OFFSET)
    store.apply([Finished(answer("c"), 3.0), Finished(answer("a", 1), 4.0)], OFFSET)
    store.apply([Finished(answer("b", 1), 5.0), Finished(answer("c", 1), 6.0)], OFFSET)
    assert [(a.task_id, at) for a, at in load(store).results] == [
        ("a", 4.0), ("b", 5.0), ("c", 6.0)
    ]  # fmt: skip


def test_result_forgotten_then_finished_again_in_one_batch(store: Store) -> None:
    store.apply([Finished(answer("a"), 1.0), Finished(answer("b"), 2.0)], OFFSET)
    replay: list[Change] = [ResultForgotten("a"), Accepted(task("a", 5))]
    store.apply([*replay, Finished(answer("a", 1), 3.0), ResultForgotten("b")], OFFSET)
    assert load(store).results == [(answer("a", 1), 3.0)]
    assert load(store).tasks == []


def test_dead_letters_removed_one_or_all_and_added_again(store: Store) -> None:
    store.apply([DeadLettered(dead("a")), DeadLettered(dead("b")), DeadLettered(dead("c"))], OFFSET)
    store.apply([DeadLetterRemoved("b"), DeadLettered(dead("a", 21.0))], OFFSET)
    assert load(store).dead_letters == [dead("c"), dead("a", 21.0)]
    store.apply([DeadLetterRemoved(None), DeadLettered(dead("d")), DeadLetterRemoved("x")], OFFSET)
    assert load(store).dead_letters == [dead("d")]
    store.apply([DeadLettered(dead("e")), DeadLetterRemoved(None)], OFFSET)
    assert load(store).dead_letters == []


def test_a_replay_removes_the_dead_letter_and_queues_the_task_again(store: Store) -> None:
    failed: list[Change] = [Accepted(task("a")), Finished(answer("a", 124), 2.0)]
    store.apply([*failed, DeadLettered(dead("a"))], OFFSET)
    replay: list[Change] = [DeadLetterRemoved("a"), ResultForgotten("a"), Accepted(task("a", 1))]
    store.apply(replay, OFFSET)
    assert load(store) == Snapshot([task("a", 1)], [], [], 2)


def test_times_convert_between_clocks_and_past_ones_stop_at_now(store: Store) -> None:
    store.apply([Accepted(task("a", submitted_at=50.0, expires_at=80.0))], OFFSET)
    store.apply([Finished(answer("b"), 60.0), DeadLettered(dead("c", 70.0))], OFFSET)
    # Another process: its monotonic clock reads 1000 s less for the same Unix time.
    snapshot = store.load(OFFSET + 1000, now=-945.0)
    assert snapshot.tasks == [task("a", submitted_at=-950.0, expires_at=-920.0)]
    assert snapshot.results == [(answer("b"), -945.0)]  # -940 would be in the future
    assert snapshot.dead_letters == [dead("c", -945.0)]


def test_next_seq_survives_the_tasks_that_had_it(store: Store) -> None:
    store.apply([Accepted(task("a", 41))], OFFSET)
    store.apply([Finished(answer("a"), 1.0)], OFFSET)
    assert load(store).next_seq == 42
    store.apply([Accepted(task("b", 7))], OFFSET)  # a lower seq never moves it back
    assert load(store).next_seq == 42


def test_reopening_gives_the_same_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    store = Store.open(path)
    store.apply(
        [Accepted(task("a", 0)), Accepted(task("b", 1)), Finished(answer("b"), 3.0)], OFFSET
    )
    store.apply([DeadLettered(dead("c")), Attempted("a", 2)], OFFSET)
    before = load(store)
    store.close()
    reopened = Store.open(path, durable_sync=True)
    try:
        assert load(reopened) == before
        assert before.tasks and before.results and before.dead_letters
    finally:
        reopened.close()


def test_a_failed_batch_records_none_of_its_changes(store: Store) -> None:
    store.apply([Accepted(task("a", 0))], OFFSET)
    broken = task("b", 1, payload=None)  # NOT NULL: fails after the delete of "a" ran
    with pytest.raises(StoreError, match="could not record changes"):
        store.apply([Finished(answer("a"), 1.0), Accepted(broken)], OFFSET)
    assert load(store) == Snapshot([task("a", 0)], [], [], 1)
    store.apply([Finished(answer("a"), 1.0)], OFFSET)  # and the store still works
    assert load(store).results == [(answer("a"), 1.0)]


# ------------------------------------------------------------------------------ pruning


def test_prune_results_forgets_old_answers_oldest_first(store: Store) -> None:
    store.apply([Finished(answer(str(i)), float(i)) for i in range(10)], OFFSET)
    assert store.prune_results(3.0, OFFSET) == 4  # finished at 0, 1, 2 and 3
    assert [a.task_id for a, _ in load(store).results] == [str(i) for i in range(4, 10)]
    assert store.prune_results(3.0, OFFSET, keep=2) == 4
    assert [a.task_id for a, _ in load(store).results] == ["8", "9"]
    assert store.prune_results(100.0, OFFSET) == 2
    assert store.prune_results(100.0, OFFSET, keep=5) == 0


def test_trim_dead_letters_keeps_the_newest(store: Store) -> None:
    store.apply([DeadLettered(dead(str(i))) for i in range(5)], OFFSET)
    assert store.trim_dead_letters(10) == 0
    assert store.trim_dead_letters(2) == 3
    assert [e.task_id for e in load(store).dead_letters] == ["3", "4"]


# ----------------------------------------------------------------------------- refusals


def test_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"does not exist; create it") as caught:
        Store.open(tmp_path / "nowhere" / "broker.db")
    assert isinstance(caught.value, OSError)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"just some text, long enough to be read as a header" * 20)
    with pytest.raises(StoreError, match="is not a zbroker store"):
        Store.open(path)
    assert path.read_bytes().startswith(b"just some text")


def test_another_applications_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(StoreError, match="SQLite file but not a zbroker store"):
        Store.open(path)
    assert not (tmp_path / "other.db-wal").exists()


def test_a_store_from_a_newer_broker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match=r"schema 99 is newer than this zbroker's \(1\); upgrade"):
        Store.open(path)


def test_a_store_in_use_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="in use by another process"):
        Store.open(store.path)
    store.apply([Accepted(task("a"))], OFFSET)  # the first one is unaffected
    assert len(load(store).tasks) == 1


# ------------------------------------------------------------------------------ kill -9

BATCHES = """
from broker.journal import Accepted, Finished, StoredTask
from broker.protocol import TaskCompleted

def changes(batch):
    # 60 tasks accepted per batch; the first 30 of the batch before finish in this one.
    accepted = [
        Accepted(StoredTask(f"{batch}-{i}", "f", b"[%d]" % i, 5, batch * 100 + i, 0, None, 0,
                            float(batch), None))
        for i in range(60)
    ]
    finished = [Finished(TaskCompleted(f"{batch - 1}-{i}", 0, b"%d" % i), float(batch))
                for i in range(30)]
    return accepted + finished if batch else accepted
"""

WRITER = """
import sys
from broker.store import Store

store = Store.open(sys.argv[1])
batch = int(sys.argv[2])
pending = changes(batch)
while True:
    store.apply(pending, 0.0)
    pending = changes(batch + 1)  # ready first, so that a kill after a print lands in apply
    print(batch, flush=True)  # only once apply returned
    batch += 1
"""


def expected_after(batches: int) -> Snapshot:
    namespace: dict[str, Any] = {}
    exec(BATCHES, namespace)
    model = Model()
    for batch in range(batches):
        for change in namespace["changes"](batch):
            model.apply(change)
    return model.snapshot()


def run_writer_and_kill(path: Path, start: int, batches_to_see: int) -> int:
    """Start a writer at batch `start` and SIGKILL it once it reported `batches_to_see`
    batches (it is then most likely inside `apply`); the last batch it reported applied."""
    command = [sys.executable, "-c", BATCHES + WRITER, str(path), str(start)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        reported = [proc.stdout.readline() for _ in range(batches_to_see)]
    finally:
        proc.kill()  # SIGKILL
        # Through the same buffered reader: readline may have read ahead.
        reported += proc.stdout.read().splitlines()
        error = proc.stderr.read().decode()
        proc.wait(timeout=10)
    assert proc.returncode == -9, f"the writer stopped by itself: {error}"
    assert len(reported) >= batches_to_see and all(reported), reported
    return max(int(n) for n in reported)


def test_every_batch_reported_applied_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    committed = 0
    for round_ in range(5):
        last = run_writer_and_kill(path, committed, batches_to_see=10 + 7 * round_)
        store = Store.open(path)
        try:
            snapshot = store.load(0.0, FAR)
        finally:
            store.close()
        committed = (snapshot.next_seq + 99) // 100  # the batches whose tasks are there
        # At most one batch more than reported: it committed, the kill came before the print.
        assert committed in (last + 1, last + 2)
        assert snapshot == expected_after(committed)  # whole batches, never part of one


# ------------------------------------------------------------------- model-based property


@dataclass
class Model:
    """What the store should hold, as plain dicts in insertion order."""

    tasks: dict[str, StoredTask] = field(default_factory=dict)
    results: dict[str, tuple[TaskCompleted, float]] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter] = field(default_factory=dict)
    next_seq: int = 0

    def apply(self, change: Change) -> None:
        match change:
            case Accepted(t):
                self.tasks[t.task_id] = t
                self.next_seq = max(self.next_seq, t.seq + 1)
            case Attempted(task_id, attempts) if task_id in self.tasks:
                self.tasks[task_id] = replace(self.tasks[task_id], attempts=attempts)
            case Finished(a, at):
                self.tasks.pop(a.task_id, None)
                self.results.pop(a.task_id, None)
                self.results[a.task_id] = (a, at)
            case ResultForgotten(task_id):
                self.results.pop(task_id, None)
            case DeadLettered(e):
                self.dead_letters.pop(e.task_id, None)
                self.dead_letters[e.task_id] = e
            case DeadLetterRemoved(None):
                self.dead_letters.clear()
            case DeadLetterRemoved(str(task_id)):
                self.dead_letters.pop(task_id, None)

    def prune(self, older_than: float, keep: int | None) -> None:
        while self.results and next(iter(self.results.values()))[1] <= older_than:
            del self.results[next(iter(self.results))]
        while keep is not None and len(self.results) > keep:
            del self.results[next(iter(self.results))]

    def snapshot(self) -> Snapshot:
        tasks = sorted(self.tasks.values(), key=lambda t: t.seq)
        return Snapshot(tasks, list(self.results.values()), list(self.dead_letters.values()),
                        self.next_seq)  # fmt: skip


IDS = st.sampled_from(["a", "b", "c", "d"])
TIMES = st.integers(0, 400).map(lambda n: n / 4)  # exact in binary


@st.composite
def changes(draw: st.DrawFn) -> list[Change]:
    """A journal over a few task ids, every Accepted with the next seq and of a task not
    pending (the scheduler accepts a task id again only once it has been answered)."""
    out: list[Change] = []
    pending: set[str] = set()
    for seq in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 6))
        tid, at = draw(IDS), draw(TIMES)
        if kind <= 1 and tid not in pending:
            pending.add(tid)
            out.append(Accepted(task(tid, seq, attempts=draw(st.integers(0, 3)), submitted_at=at)))
        elif kind == 2:
            out.append(Attempted(tid, draw(st.integers(1, 5))))
        elif kind == 3:
            pending.discard(tid)
            out.append(Finished(answer(tid, draw(st.sampled_from([0, 1])), seq), at))
        elif kind == 4:
            out.append(ResultForgotten(tid))
        elif kind == 5:
            out.append(DeadLettered(dead(tid, at)))
        else:
            out.append(DeadLetterRemoved(draw(st.none() | IDS)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes(), st.lists(st.integers(1, 12), min_size=1), st.data())
def test_any_batching_gives_the_models_snapshot(
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
            # next_seq depends on the batching (a task accepted and answered in one batch
            # is never written); what a restart needs is that it orders after every
            # pending task.
            snapshot, expected = load(store), model.snapshot()
            assert replace(snapshot, next_seq=0) == replace(expected, next_seq=0)
            assert all(t.seq < snapshot.next_seq for t in snapshot.tasks)
            assert snapshot.next_seq <= expected.next_seq
        finally:
            store.close()
