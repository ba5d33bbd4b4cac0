"""What a task past its task timeout costs a node process: the RESULT 124, the restart
reason, and OverdueTasks deciding between restarting at once and after the other tasks."""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import pytest

from broker.protocol import EXIT_TIMEOUT, ErrorInfo, Result, Run, decode
from node import supervision
from node.lifecycle import RESTART_DRAIN, Lifecycle
from node.link import BrokerLink
from node.overdue import OverdueTasks, overdue_result, restart_reason, seconds
from node.slots import Slots


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
    assert restart_reason(late) == "stopped after task t1 exceeded its 1 s timeout"


class RecordingLink:
    """Records what OverdueTasks does to the link, in order."""

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.unsent: list[list[bytes]] = []

    def deregister(self) -> None:
        self.done.append("DEREGISTER")

    def send_in_order(self, frames: list[bytes]) -> None:
        self.done.append(decode(frames))

    def close(self, clean: bool) -> None:
        self.done.append(("close", clean))


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
) -> tuple[OverdueTasks, RecordingLink, Lifecycle]:
    link, life = RecordingLink(), Lifecycle()
    slots = cast(Slots, ScriptedSlots(late, still_busy))
    return OverdueTasks(cast(BrokerLink, link), life, slots, report_fd), link, life


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
    assert supervision.read_report(read_fd) == restart_reason(late)


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
