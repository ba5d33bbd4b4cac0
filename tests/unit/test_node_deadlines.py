"""TaskDeadlines: the running tasks of the slot threads, earliest deadline first."""

from __future__ import annotations

import math

from broker.protocol import Run
from node.slots.deadlines import TaskDeadlines


def run(task_id: str, task_timeout: float, attempt: int = 1) -> Run:
    return Run(task_id, "sleep", b"[10]", attempt, task_timeout)


def test_running_tasks_past_their_deadline_come_in_order() -> None:
    deadlines = TaskDeadlines()
    assert deadlines.next_due == math.inf
    deadlines.add(run("b", 2.0), now=100.0)
    deadlines.add(run("a", 1.0), now=100.0)
    deadlines.add(run("c", 5.0), now=100.0)
    assert deadlines.next_due == 101.0
    assert deadlines.expired(100.5, running={"a", "b", "c"}) == []
    assert [r.task_id for r in deadlines.expired(102.0, running={"a", "b", "c"})] == ["a", "b"]
    assert deadlines.next_due == 105.0 and len(deadlines) == 1


def test_finished_tasks_and_earlier_runs_of_an_id_are_skipped() -> None:
    deadlines = TaskDeadlines()
    deadlines.add(run("done", 1.0), now=0.0)
    deadlines.add(run("again", 1.0), now=0.0)
    deadlines.add(run("again", 3.0, attempt=2), now=0.5)  # a later RUN of the same task
    assert deadlines.expired(2.0, running={"again"}) == []  # "done" finished; attempt 1 old
    [late] = deadlines.expired(4.0, running={"again"})
    assert (late.task_id, late.attempt) == ("again", 2)
    assert deadlines.next_due == math.inf and len(deadlines) == 0
