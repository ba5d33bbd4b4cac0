"""Persistence, the door the server uses: group-commit timing, the lock that keeps a second
broker off a store, pruning, the dead-letter log beside the store, and a round trip through
the scheduler's journal (real files in tmp_path)."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Command, Received, Restored, Sent
from broker.core.journal import CHANGES, Change, SaveAnswer, SaveDeadLetter
from broker.core.scheduler import Scheduler
from broker.store import SAVE_BATCH, Persistence, PersistenceConfig, StoreError
from tests.store_helpers import OFFSET, answer, dead, save


def store_config(tmp_path: Path, **options: object) -> PersistenceConfig:
    return PersistenceConfig(str(tmp_path / "s.sqlite3"), **options)  # type: ignore[arg-type]


def test_changes_wait_for_the_save_delay_unless_many_are_waiting() -> None:
    persistence = Persistence(PersistenceConfig(save_delay=0.005))
    assert not persistence.save_now(0, 1.0)
    assert not persistence.save_now(2, 1.0)  # the first change starts the clock
    assert persistence.save_due == pytest.approx(1.005)
    assert not persistence.save_now(4, 1.004)
    assert persistence.save_now(4, 1.005)
    persistence.save([], OFFSET, 1.005)
    assert persistence.save_due is None  # saved: the clock starts again with the next change
    other = Persistence(PersistenceConfig(save_delay=0.005))
    assert other.save_now(SAVE_BATCH, 1.0)  # a large batch is written at once


def test_without_a_store_or_log_nothing_is_kept() -> None:
    persistence = Persistence(PersistenceConfig())
    assert not persistence.enabled
    assert persistence.open(OFFSET, 0.0) is None
    persistence.save([save("a")], OFFSET, 0.0)
    persistence.close()


def test_a_second_broker_cannot_open_a_store_in_use(tmp_path: Path) -> None:
    config = store_config(tmp_path)
    first = Persistence(config)
    assert first.open(OFFSET, 0.0) == Restored([], [], [], 0)
    try:
        with pytest.raises(StoreError, match=r"in use by another broker \(pid \d+\); stop it"):
            Persistence(config).open(OFFSET, 0.0)
    finally:
        first.close()
    again = Persistence(config)  # free once the first has closed it
    assert again.open(OFFSET, 0.0) is not None
    again.close()


def test_a_refused_store_leaves_nothing_open(tmp_path: Path) -> None:
    log_path = tmp_path / "dlq.jsonl"
    config = store_config(tmp_path, dead_letter_log=str(log_path))
    Path(config.store or "").touch()  # empty: refused
    persistence = Persistence(config)
    with pytest.raises(StoreError, match="the file is empty"):
        persistence.open(OFFSET, 0.0)
    with Path(f"{config.store}.lock").open("a") as lock:  # the lock was let go
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    persistence.save([SaveDeadLetter(dead("a"))], OFFSET, 0.0)  # the log was closed too
    assert log_path.read_bytes() == b""


def test_saves_are_kept_and_old_answers_pruned(tmp_path: Path) -> None:
    config = store_config(tmp_path, results_ttl=10.0, results_max=3, dead_letters_max=2)
    persistence = Persistence(config)
    persistence.open(OFFSET, 0.0)
    answers: list[Change] = [SaveAnswer(answer(str(i)), float(i)) for i in range(6)]
    dead_letters: list[Change] = [SaveDeadLetter(dead(i)) for i in "xyz"]
    persistence.save([save("a", 1), *answers, *dead_letters], OFFSET, 5.0)  # prunes at once
    persistence.close()
    reopened = Persistence(config)
    restored = reopened.open(OFFSET, 5.0)
    reopened.close()
    assert restored is not None
    assert [a.task_id for a, _ in restored.answers] == ["3", "4", "5"]  # the newest 3
    assert [e.spec.task_id for e in restored.dead_letters] == ["y", "z"]
    assert [t.spec.task_id for t in restored.pending] == ["a"]


def test_answers_pending_tasks_need_as_inputs_are_not_pruned(tmp_path: Path) -> None:
    config = store_config(tmp_path, results_ttl=1.0, results_max=2)
    persistence = Persistence(config)
    persistence.open(OFFSET, 0.0)
    answers: list[Change] = [SaveAnswer(answer(str(i)), float(i)) for i in range(6)]
    persistence.save(answers, OFFSET, 10.0, lambda: {"1"})  # all expired; 1 is an input
    persistence.close()
    reopened = Persistence(config)
    restored = reopened.open(OFFSET, 10.0)
    reopened.close()
    assert restored is not None and [a.task_id for a, _ in restored.answers] == ["1"]


def test_dead_letters_go_to_the_log_with_the_default_retries(tmp_path: Path) -> None:
    log_path = tmp_path / "dlq.jsonl"
    config = store_config(tmp_path, dead_letter_log=str(log_path), default_retries=7)
    persistence = Persistence(config)
    persistence.open(OFFSET, 0.0)
    entries = [SaveDeadLetter(dead("a", retries=None)), SaveDeadLetter(dead("b", retries=1))]
    persistence.save([save("c"), *entries], OFFSET, 1.0)
    persistence.close()
    lines = [json.loads(text) for text in log_path.read_text().splitlines()]
    assert [(e["task_id"], e["retries"]) for e in lines] == [("a", 7), ("b", 1)]


def test_a_log_that_cannot_be_written_stops_the_save(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, a real full disk for the log."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    persistence = Persistence(PersistenceConfig(dead_letter_log="/dev/full"))
    persistence.open(OFFSET, 0.0)
    try:
        with pytest.raises(StoreError, match=r"^disk full writing /dev/full: No space left"):
            persistence.save([SaveDeadLetter(dead("a"))], OFFSET, 1.0)
    finally:
        persistence.close()


def journal(commands: list[Command]) -> list[Change]:
    return [c for c in commands if isinstance(c, CHANGES)]


def test_the_schedulers_journal_saved_and_restored_gives_back_its_state(
    tmp_path: Path,
) -> None:
    config = store_config(tmp_path)
    scheduler = Scheduler(SchedulerConfig(journal=True))
    persistence = Persistence(config)
    restored = persistence.open(OFFSET, 0.0)
    assert restored is not None
    scheduler.handle(restored, 0.0)  # an empty store: nothing comes back
    commands = scheduler.handle(Received(b"n", p.Register("n", "h", 1, ("f",), 1)), 0.0)
    for task_id in ("a", "b", "c"):
        execute = p.Execute(p.TaskSpec(task_id, "f", b"[1]", 3, retries=0, queue_timeout=60.0))
        commands += scheduler.handle(Received(b"c", execute), 0.0)
    failed = p.Result("a", 1, b"null", p.ErrorInfo("E", "bad"), 1)
    commands += scheduler.handle(Received(b"n", failed), 0.1)
    commands += scheduler.handle(Sent(), 0.1)
    persistence.save(journal(commands), OFFSET, 0.1)
    persistence.close()

    reopened = Persistence(config)
    back = reopened.open(OFFSET + 100.0, 5.0)  # another process, another monotonic clock
    reopened.close()
    assert back is not None
    assert [(t.spec, t.seq, t.submitted_at) for t in back.pending] == [
        (p.TaskSpec(i, "f", b"[1]", 3, 0, 60.0), seq, -100.0) for i, seq in (("b", 2), ("c", 3))
    ]
    assert [a.task_id for a, _ in back.answers] == ["a"]
    assert [e.spec.task_id for e in back.dead_letters] == ["a"]
    assert back.next_seq == 4
    restarted = Scheduler(SchedulerConfig())
    restarted.handle(back, 5.0)
    assert sorted(restarted.pending()) == ["b", "c"]
    assert restarted.kept_answer("a") == back.answers[0][0]
    assert restarted.dead_letter_ids() == ["a"]
