"""Builders shared by the store's tests (tests/unit/test_store_*.py), and the model of what a
store must hold after a journal: plain dicts in insertion order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from msgspec.structs import replace

from broker.core.deadletters import DeadLetter
from broker.core.events import Restored
from broker.core.journal import (
    Change,
    ForgetAnswer,
    ForgetDeadLetter,
    PendingTask,
    SaveAnswer,
    SaveAttempts,
    SaveDeadLetter,
    SaveTask,
)
from broker.protocol import ErrorInfo, TaskCompleted, TaskSpec
from broker.store import Store

# Unix time ~2023 plus times that are sums of powers of two: the round trip is exact.
OFFSET = 1_700_000_000.0
FAR = 1e12  # a `now` later than every time in these tests


def spec(task_id: str, **options: Any) -> TaskSpec:
    """A spec with every option set; `options` override them."""
    fields: dict[str, Any] = {"args": b"[1,2]", "priority": 5, "retries": 2}
    fields |= {"queue_timeout": 30.0, "task_timeout": 1.5}
    return TaskSpec(task_id, "f", **(fields | options))


def save(task_id: str, seq: int = 0, at: float = 10.25, **options: Any) -> SaveTask:
    return SaveTask(spec(task_id, **options), seq, at)


def pending(
    task_id: str, seq: int = 0, at: float = 10.25, attempts: int = 0, **options: Any
) -> PendingTask:
    return PendingTask(spec(task_id, **options), seq, at, attempts)


def answer(task_id: str, code: int = 0, attempts: int = 1) -> TaskCompleted:
    error = None if code == 0 else ErrorInfo("ValueError", f"bad {task_id}")
    return TaskCompleted(task_id, code, b"42" if code == 0 else b"null", error, attempts)


def dead(task_id: str, at: float = 20.5, **options: Any) -> DeadLetter:
    error = ErrorInfo("Timeout", "took too long")
    fields: dict[str, Any] = {"priority": 7, "retries": None, "task_timeout": None}
    return DeadLetter(spec(task_id, **(fields | options)), 2, 124, error, at)


def load(store: Store, now: float = FAR) -> Restored:
    return store.load(OFFSET, now)


@dataclass
class Model:
    """What the store should hold after a journal."""

    tasks: dict[str, PendingTask] = field(default_factory=dict)
    answers: dict[str, tuple[TaskCompleted, float]] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter] = field(default_factory=dict)
    next_seq: int = 0

    def apply(self, change: Change) -> None:
        match change:
            case SaveTask(s, seq, at):
                self.tasks[s.task_id] = PendingTask(s, seq, at)
                self.next_seq = max(self.next_seq, seq + 1)
            case SaveAttempts(task_id, attempts) if task_id in self.tasks:
                self.tasks[task_id] = replace(self.tasks[task_id], attempts=attempts)
            case SaveAnswer(a, at):
                self.tasks.pop(a.task_id, None)
                self.answers.pop(a.task_id, None)
                self.answers[a.task_id] = (a, at)
            case ForgetAnswer(task_id):
                self.answers.pop(task_id, None)
            case SaveDeadLetter(e):
                self.dead_letters.pop(e.spec.task_id, None)
                self.dead_letters[e.spec.task_id] = e
            case ForgetDeadLetter(None):
                self.dead_letters.clear()
            case ForgetDeadLetter(str(task_id)):
                self.dead_letters.pop(task_id, None)

    def prune(self, older_than: float, keep: int | None) -> None:
        while self.answers and next(iter(self.answers.values()))[1] <= older_than:
            del self.answers[next(iter(self.answers))]
        while keep is not None and len(self.answers) > keep:
            del self.answers[next(iter(self.answers))]

    def restored(self) -> Restored:
        tasks = sorted(self.tasks.values(), key=lambda t: t.seq)
        answers, dead_letters = list(self.answers.values()), list(self.dead_letters.values())
        return Restored(tasks, answers, dead_letters, self.next_seq)


# ------------------------------------------------------------------ random journals

IDS = st.sampled_from(["a", "b", "c", "d"])
TIMES = st.integers(0, 400).map(lambda n: n / 4)  # exact in binary


@st.composite
def journals(draw: st.DrawFn) -> list[Change]:
    """A journal over a few task ids, every SaveTask with the next seq and of a task not
    pending (the scheduler saves a task id again only once it has been answered)."""
    out: list[Change] = []
    pending: set[str] = set()
    for seq in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 6))
        tid, at = draw(IDS), draw(TIMES)
        if kind <= 1 and tid not in pending:
            pending.add(tid)
            priority = draw(st.integers(0, 9))
            retries = draw(st.none() | st.integers(0, 100))
            out.append(save(tid, seq, at, priority=priority, retries=retries))
        elif kind == 2:
            out.append(SaveAttempts(tid, draw(st.integers(1, 5))))
        elif kind == 3:
            pending.discard(tid)
            out.append(SaveAnswer(answer(tid, draw(st.sampled_from([0, 1])), seq), at))
        elif kind == 4:
            out.append(ForgetAnswer(tid))
        elif kind == 5:
            out.append(SaveDeadLetter(dead(tid, at)))
        else:
            out.append(ForgetDeadLetter(draw(st.none() | IDS)))
    return out
