"""Execution timeouts on the node: the deadline table, the RESULT 124 and the restart reason."""

from __future__ import annotations

import math

from broker.protocol import EXIT_TIMEOUT, ErrorInfo, Result, Run
from node.timeouts import Deadlines, restart_reason, seconds, timeout_result


def run(task_id: str, timeout: float, attempt: int = 1) -> Run:
    return Run(task_id, "sleep", b"[10]", attempt, timeout)


def test_seconds_are_written_as_people_write_them() -> None:
    assert [seconds(v) for v in (1.0, 0.3, 90.0, 0.001)] == ["1", "0.3", "90", "0.001"]


def test_timeout_result_and_restart_reason() -> None:
    late = run("t1", 1.0, attempt=3)
    assert timeout_result(late) == Result(
        "t1",
        EXIT_TIMEOUT,
        b"null",
        ErrorInfo(
            "Timeout",
            "sleep() exceeded its timeout of 1 s (attempt 3); "
            "the node process was restarted to stop it",
        ),
    )
    assert restart_reason(late) == "stopped after task t1 exceeded its 1 s timeout"


def test_deadlines_give_running_tasks_past_their_deadline_in_order() -> None:
    deadlines = Deadlines()
    assert deadlines.next_due == math.inf
    deadlines.add(run("b", 2.0), now=100.0)
    deadlines.add(run("a", 1.0), now=100.0)
    deadlines.add(run("c", 5.0), now=100.0)
    assert deadlines.next_due == 101.0
    assert deadlines.expired(100.5, running={"a", "b", "c"}) == []
    assert [r.task_id for r in deadlines.expired(102.0, running={"a", "b", "c"})] == ["a", "b"]
    assert deadlines.next_due == 105.0 and len(deadlines) == 1


def test_finished_tasks_and_earlier_runs_of_an_id_are_skipped() -> None:
    deadlines = Deadlines()
    deadlines.add(run("done", 1.0), now=0.0)
    deadlines.add(run("again", 1.0), now=0.0)
    deadlines.add(run("again", 3.0, attempt=2), now=0.5)  # a later RUN of the same task
    assert deadlines.expired(2.0, running={"again"}) == []  # "done" finished; attempt 1 old
    [late] = deadlines.expired(4.0, running={"again"})
    assert (late.task_id, late.attempt) == ("again", 2)
    assert deadlines.next_due == math.inf and len(deadlines) == 0
