"""What a task the node cannot stop costs its process (past its task timeout, or cancelled
while it runs): the RESULT 124 or 130, the restart reason, and Restarts deciding between
restarting at once and after the other tasks."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import pytest

from broker.protocol import EXIT_CANCELLED, EXIT_TIMEOUT, ErrorInfo, Result, Run, decode
from node import supervision
from node.lifecycle import RESTART_DRAIN, Lifecycle
from node.link import BrokerLink
from node.restarts import (
    Restarts,
    cancelled_reason,
    cancelled_result,
    overdue_reason,
    overdue_result,
    seconds,
)
from node.slots import Slots
from node.slots.cancelled import CancelledTasks


def run(task_id: str, task_timeout: float, attempt: int = 1) -> Run:
    return Run(task_id, "sleep", b"[10]", attempt, task_timeout)


def test_seconds_are_written_as_people_write_them() -> None:
    assert [seconds(v) for v in (1.0, 0.3, 90.0, 0.001)] == ["1", "0.3", "90", "0.001"]


def test_overdue_result_echoes_the_attempt_and_the_restart_reason_names_the_task() -> None:
    late = run("t1", 1.0, attempt=3)
    assert overdue_result(late) == Result(
        "t1",
        EXIT_TIMEOUT,
        b"null",
        ErrorInfo(
            "Timeout",
            "sleep() exceeded its timeout of 1 s (attempt 3); "
            "the node process was restarted to stop it",
        ),
        attempt=3,
    )
    assert overdue_reason(late) == "stopped after task t1 exceeded its 1 s timeout"


class RecordingLink:
    """Records what Restarts does to the link, in order."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.unsent: list[list[bytes]] = []

    def deregister(self) -> None:
        self.done.append("DEREGISTER")

    def send_in_order(self, frames: list[bytes]) -> None:
        self.done.append(decode(frames))

    def close(self, clean: bool) -> None:
        self.done.append(("close", clean))

    def unstored(self) -> list[list[bytes]]:
        return []  # (the answers just sent are handed over all the same)


class ScriptedSlots:
    def __init__(self, late: list[Run], still_busy: int) -> None:
        self.late, self.busy = late, still_busy

    def expire(self, now: float) -> list[Run]:
        late, self.late = self.late, []
        return late


class Exited(Exception):
    pass


def parts(
    late: list[Run], still_busy: int, report_fd: int | None = None
) -> tuple[Restarts, RecordingLink, Lifecycle]:
    link, life = RecordingLink(), Lifecycle()
    slots = cast(Slots, ScriptedSlots(late, still_busy))
    return Restarts(cast(BrokerLink, link), life, slots, report_fd), link, life


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """os._exit raises Exited instead (after noting the code); logging stays up."""
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    return codes


def test_others_running_the_process_deregisters_answers_and_waits(exits: list[int]) -> None:
    late = run("slow", 0.3, attempt=2)
    tasks, link, life = parts([late], still_busy=1)
    tasks.expire(now=50.0)
    assert link.done == ["DEREGISTER", overdue_result(late)]
    assert life.stopping and life.restarting and life.restart_by == 50.0 + RESTART_DRAIN
    assert life.restart_reason == "stopped after task slow exceeded its 0.3 s timeout"
    assert exits == []
    tasks.expire(now=51.0)  # nothing late any more: nothing happens
    assert len(link.done) == 2


def test_nothing_else_running_the_process_ends_at_once_and_tells_its_supervisor(
    exits: list[int],
) -> None:
    read_fd, write_fd = os.pipe()
    late = run("slow", 0.3)
    tasks, link, _ = parts([late], still_busy=0, report_fd=write_fd)
    with pytest.raises(Exited):
        tasks.expire(now=50.0)
    os.close(write_fd)
    assert exits == [supervision.EXIT_RESTART]
    assert link.done == ["DEREGISTER", overdue_result(late), ("close", True)]
    # The answer goes to the successor too: it may not have reached the broker.
    report = supervision.read_report(read_fd)
    assert report.reason == overdue_reason(late)
    assert [decode(frames) for frames in report.answers] == [overdue_result(late)]


def test_an_operators_stop_wins_over_a_restart(exits: list[int]) -> None:
    tasks, _, life = parts([run("slow", 0.3)], still_busy=0)
    life.stop_requested()
    tasks.expire(now=50.0)  # stopping already: it ends through the loop
    assert exits == [] and life.restart_reason is not None
    tasks.exit_if_restarting()
    assert exits == []  # it exits 0 as the operator asked, not to be restarted


def test_a_restarting_process_exits_once_its_tasks_are_done(
    exits: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    tasks, _, _ = parts([run("slow", 0.3)], still_busy=1)
    tasks.expire(now=50.0)
    with caplog.at_level(logging.WARNING), pytest.raises(Exited):
        tasks.exit_if_restarting()
    assert exits == [supervision.EXIT_RESTART]
    assert "restarting with 1 task(s) running" in caplog.text


def test_cancelled_results_say_whether_the_task_had_started() -> None:
    task = Run("t1", "multiply", b"[2,3]", 2)
    assert cancelled_result(task, started=False) == Result(
        "t1",
        EXIT_CANCELLED,
        b"null",
        ErrorInfo("Cancelled", "multiply() was cancelled before it started (attempt 2)"),
        attempt=2,
    )
    assert cancelled_result(task, started=True) == Result(
        "t1",
        EXIT_CANCELLED,
        b"null",
        ErrorInfo(
            "Cancelled",
            "multiply() was cancelled by a client (attempt 2); "
            "the node process was restarted to stop it",
        ),
        attempt=2,
    )
    assert cancelled_reason(task) == "stopped after task t1 was cancelled"


def test_cancelled_held_tasks_are_answered_and_the_process_goes_on(exits: list[int]) -> None:
    held = [run("a", 1.0), run("b", 1.0)]
    tasks, link, life = parts([], still_busy=1)
    tasks.cancel(CancelledTasks(held, []), now=50.0)
    assert link.done == [cancelled_result(r, started=False) for r in held]
    assert not life.stopping and exits == []


def test_a_cancelled_running_task_restarts_the_process_after_the_others(
    exits: list[int],
) -> None:
    held, running = run("a", 1.0), run("b", 1.0, attempt=3)
    tasks, link, life = parts([], still_busy=1)
    tasks.cancel(CancelledTasks([held], [running]), now=50.0)
    # DEREGISTER before the answers free slots: no new RUN for a process about to end.
    assert link.done == [
        "DEREGISTER",
        cancelled_result(held, started=False),
        cancelled_result(running, started=True),
    ]
    assert life.restarting and life.restart_reason == "stopped after task b was cancelled"
    assert exits == []


@pytest.mark.parametrize("still_busy", [0, 2], ids=["idle", "inline-held-behind"])
def test_a_cancelled_task_the_socket_thread_runs_ends_the_process_at_once(
    exits: list[int], still_busy: int
) -> None:
    read_fd, write_fd = os.pipe()
    running = run("b", 1.0)
    tasks, link, _ = parts([], still_busy=still_busy, report_fd=write_fd)
    with pytest.raises(Exited):
        tasks.cancel(CancelledTasks([], [running], ends_process=still_busy > 0), now=50.0)
    os.close(write_fd)
    assert exits == [supervision.EXIT_RESTART]
    assert link.done == ["DEREGISTER", cancelled_result(running, started=True), ("close", True)]
    report = supervision.read_report(read_fd)
    assert report.reason == "stopped after task b was cancelled"
    assert [decode(f) for f in report.answers] == [cancelled_result(running, started=True)]
