"""Persistence: the group-commit timing, the lock that keeps a second broker off a store,
and a store round trip through the scheduler's journal (real SQLite files in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import protocol as p
from broker.persistence import SAVE_BATCH, Persistence, PersistenceConfig
from broker.scheduler import Scheduler, SchedulerConfig
from broker.store import StoreError


def test_changes_wait_for_the_save_delay_unless_many_are_waiting() -> None:
    persistence = Persistence(PersistenceConfig(save_delay=0.005))
    assert not persistence.save_now(0, 1.0)
    assert not persistence.save_now(2, 1.0)  # the first change starts the clock
    assert persistence.save_due == pytest.approx(1.005)
    assert not persistence.save_now(4, 1.004)
    assert persistence.save_now(4, 1.005)
    other = Persistence(PersistenceConfig(save_delay=0.005))
    assert other.save_now(SAVE_BATCH, 1.0)  # a large batch is written at once


def test_a_second_broker_cannot_open_a_store_in_use(tmp_path: Path) -> None:
    config = PersistenceConfig(store=str(tmp_path / "s.sqlite3"))
    first = Persistence(config)
    assert first.open(0.0, 0.0) is not None
    try:
        with pytest.raises(StoreError, match=r"in use by another broker \(pid \d+\)"):
            Persistence(config).open(0.0, 0.0)
    finally:
        first.close()
    again = Persistence(config)  # free once the first has closed it
    assert again.open(0.0, 0.0) is not None
    again.close()


def test_journal_saved_and_restored_gives_the_same_pending_tasks(tmp_path: Path) -> None:
    config = PersistenceConfig(store=str(tmp_path / "s.sqlite3"))
    scheduler = Scheduler(SchedulerConfig(journal=True))
    persistence = Persistence(config)
    persistence.restore(scheduler, 0.0)  # an empty store: nothing comes back
    scheduler.handle(b"n", p.Register("n", "h", 1, ("f",), 1), 0.0)
    for task_id in ("a", "b", "c"):
        scheduler.handle(b"c", p.Execute(task_id, "f", b"[1]", 5, 0), 0.0)
    scheduler.handle(b"n", p.Result("a", 1, b"null", p.ErrorInfo("E", "bad")), 0.1)
    persistence.save(scheduler.take_journal(), 1000.0, 0.1)
    persistence.close()

    restored = Scheduler(SchedulerConfig())
    reopened = Persistence(config)
    reopened.restore(restored, 5.0)
    try:
        assert set(restored.tasks) == {"b", "c"}  # "a" was answered
        assert "a" in restored.dead and restored.results.get("a") is not None
        assert restored.held_until is not None  # its nodes have not registered yet
    finally:
        reopened.close()
