"""The dead-letter queue is bounded by count and by bytes: a stream of failing tasks never
grows the broker without end (the JSON-lines log keeps every one)."""

from __future__ import annotations

from broker.core.deadletters import ENTRY_OVERHEAD, DeadLetter, DeadLetters
from broker.protocol import ErrorInfo, TaskSpec


def letter(task_id: str, args: bytes = b"[]") -> DeadLetter:
    return DeadLetter(TaskSpec(task_id, "f", args), 1, 1, ErrorInfo("E", "failed"), 0.0)


def test_past_its_count_the_oldest_go() -> None:
    dead = DeadLetters(max_entries=3)
    for i in range(5):
        dead.add(letter(f"t{i}"))
    assert [e.spec.task_id for e in dead.newest()] == ["t4", "t3", "t2"]
    assert dead.dropped == 2
    dead.check_invariants()


def test_past_its_bytes_the_oldest_go_but_the_newest_stays() -> None:
    big = b"[" + b"1" * 1000 + b"]"
    dead = DeadLetters(max_bytes=3 * (len(big) + ENTRY_OVERHEAD))
    for i in range(5):
        dead.add(letter(f"t{i}", big))
    assert len(dead) == 3 and dead.bytes == 3 * (len(big) + ENTRY_OVERHEAD)
    huge = b"[" + b"1" * 100_000 + b"]"
    dead.add(letter("huge", huge))  # alone over the bound: kept, the others go
    assert [e.spec.task_id for e in dead.newest()] == ["huge"]
    dead.check_invariants()


def test_removing_and_adding_again_keep_the_bytes_true() -> None:
    dead = DeadLetters()
    dead.add(letter("a", b"[1,2,3]"))
    dead.add(letter("a", b"[1]"))  # the same id again: replaces
    dead.add(letter("b"))
    assert dead.remove("a") is not None and dead.bytes == 2 + ENTRY_OVERHEAD
    assert dead.clear() == 1 and dead.bytes == 0
    dead.check_invariants()
