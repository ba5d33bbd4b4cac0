"""The store's writer process (broker/store/writer.py) with a real child and a real store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.core.journal import SaveAnswer, SaveTask
from broker.protocol import TaskCompleted, TaskSpec
from broker.store import Persistence, PersistenceConfig, StoreError
from broker.store.sqlite import Store
from broker.store.writer import Apply, StoreWriter

OFFSET = 1_000_000.0


def save(n: int) -> SaveTask:
    return SaveTask(TaskSpec(f"t{n}", "noop", b"[]"), n, float(n))


def answer(n: int) -> SaveAnswer:
    return SaveAnswer(TaskCompleted(f"t{n}", 0, b"1", None, 1), float(n))


def new_store(tmp_path: Path) -> str:
    path = tmp_path / "s.sqlite3"
    Store.open(path).close()
    return str(path)


def test_batches_are_written_in_order_and_acknowledged(tmp_path: Path) -> None:
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=False)
    try:
        writer.send(Apply([save(n) for n in range(10)], OFFSET))
        writer.send(Apply([answer(n) for n in range(5)], OFFSET))
        assert writer.flush() == 2
        assert writer.outstanding == 0
    finally:
        writer.close()
    store = Store.open(path)
    try:
        restored = store.load(OFFSET, 100.0)
    finally:
        store.close()
    assert sorted(t.spec.task_id for t in restored.pending) == [f"t{n}" for n in range(5, 10)]
    assert [a.task_id for a, _ in restored.answers] == [f"t{n}" for n in range(5)]


def test_what_was_handed_over_is_written_even_when_the_broker_closes_at_once(
    tmp_path: Path,
) -> None:
    """Closing without waiting: the writer reads to the end of what it was sent first."""
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=False)
    for start in range(0, 2000, 100):
        writer.send(Apply([save(n) for n in range(start, start + 100)], OFFSET))
    writer.close()
    store = Store.open(path)
    try:
        assert len(store.load(OFFSET, 100.0).pending) == 2000
    finally:
        store.close()


def pending_after_kill(path: str, writer: StoreWriter) -> list[str]:
    """Kill the writer as a machine stop would (nothing more written); the pending ids."""
    os.kill(writer.pid, signal.SIGKILL)
    writer.close()
    store = Store.open(path)
    try:
        return [t.spec.task_id for t in store.load(OFFSET, 100.0).pending]
    finally:
        store.close()


def test_a_task_held_back_is_written_once_its_moment_is_over(tmp_path: Path) -> None:
    """No request comes after it: the writer's own timer writes it (broker.store.young),
    so a kill of the writer later finds it in the store."""
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=False)
    wal = Path(path + "-wal")
    writer.send(Apply([save(1)], OFFSET))
    assert writer.flush(timeout=10.0) == 1
    size = wal.stat().st_size if wal.exists() else 0
    deadline = time.monotonic() + 10.0
    while not (wal.exists() and wal.stat().st_size > size):  # the held task's transaction
        assert time.monotonic() < deadline, "no transaction after the acknowledgement"
        assert writer._process.poll() is None, "the writer exited"
        time.sleep(0.01)
    assert pending_after_kill(path, writer) == ["t1"]


def test_a_flush_writes_the_tasks_held_before_it_is_acknowledged(tmp_path: Path) -> None:
    """What STATUS `stored` waits for: once acknowledged, the tasks are on disk, even if
    the writer is killed at once."""
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=False)
    writer.send(Apply([save(1), save(2)], OFFSET))
    writer.send(Apply([save(3)], OFFSET, flush=True))
    assert writer.flush(timeout=10.0) == 2
    assert sorted(pending_after_kill(path, writer)) == ["t1", "t2", "t3"]


def test_with_an_fsync_per_transaction_nothing_is_held_back(tmp_path: Path) -> None:
    """--store-sync full promises a task on disk once acknowledged."""
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=True)
    writer.send(Apply([save(1)], OFFSET))
    assert writer.flush(timeout=10.0) == 1
    assert pending_after_kill(path, writer) == ["t1"]


def test_a_writer_that_dies_is_reported_with_how(tmp_path: Path) -> None:
    writer = StoreWriter(new_store(tmp_path), durable_sync=False)
    try:
        os.kill(writer.pid, signal.SIGKILL)
        with pytest.raises(StoreError, match=r"writer process \(pid \d+\) was killed by signal 9"):
            writer.send(Apply([save(1)], OFFSET))
            writer.flush(timeout=10.0)
    finally:
        writer.close()


def test_a_batch_the_writer_cannot_read_stops_it_with_the_reason(tmp_path: Path) -> None:
    """A change whose field has the wrong type (a str result: a bug) does not decode as the
    journal: the writer says why, word for word, and nothing of the batch is written."""
    path = new_store(tmp_path)
    writer = StoreWriter(path, durable_sync=False)
    wrong = SaveAnswer(TaskCompleted("t1", 0, "1", None, 1), 1.0)  # type: ignore[arg-type]
    try:
        writer.send(Apply([save(1), wrong], OFFSET))
        with pytest.raises(StoreError, match=r"could not read a batch .*Expected `bytes`"):
            writer.flush(timeout=10.0)
    finally:
        writer.close()
    store = Store.open(path)
    try:
        assert store.load(OFFSET, 100.0).pending == []
    finally:
        store.close()


def test_persistence_confirms_only_written_batches(tmp_path: Path) -> None:
    persistence = Persistence(PersistenceConfig(str(tmp_path / "p.sqlite3")))
    persistence.open(OFFSET, 0.0)
    try:
        assert persistence.save([save(1)], OFFSET, 0.0)  # with the first pruning
        assert persistence.save([answer(1)], OFFSET, 0.1)
        written, deadline = 0, time.monotonic() + 10
        while written < 2 and time.monotonic() < deadline:
            written += persistence.committed(timeout=0.5)
        assert written == 2
        assert not persistence.writing
    finally:
        persistence.close()


def test_a_new_broker_waits_for_the_writer_of_one_that_died(tmp_path: Path) -> None:
    """The lock of a broker that is gone, still held by its writer: the next broker waits
    until the writer lets it go, then opens the store."""
    store = str(tmp_path / "w.sqlite3")
    first = Persistence(PersistenceConfig(store))
    first.open(OFFSET, 0.0)
    lock = first._lock
    assert lock is not None
    # A process that holds the lock as a writer does (an inherited descriptor) for a while.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(1.5)"], pass_fds=(lock.fileno(),)
    )
    try:
        first.close()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        Path(store + ".lock").write_text(str(dead.pid))  # the owner: a pid that is gone
        second = Persistence(PersistenceConfig(store))
        started = time.monotonic()
        second.open(OFFSET, 0.0)
        waited = time.monotonic() - started
        second.close()
        assert holder.poll() is not None, "the lock was taken while the writer held it"
        assert waited < 10
    finally:
        holder.kill()
        holder.wait()
