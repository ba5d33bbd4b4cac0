"""Tasks that submit tasks (protocol.md 5.9), in the pure core: a waiting task lends its slot
(WAITING), and cancelling a parent cancels the tasks it submitted (EXECUTE parent)."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import SchedulerConfig
from tests.unit.core import Core, completed, execute, ok, register, runs

CLIENT = b"client-1"
NODE = b"n"


def child(task_id: str, parent: str) -> p.Execute:
    return p.Execute(p.TaskSpec(task_id, "f", b"[]", parent=parent))


def one_slot() -> Core:
    core = Core(SchedulerConfig(heartbeat_interval=100.0))
    core.handle(NODE, register("n", capacity=1), 0.0)
    return core


def test_a_waiting_task_lends_its_slot_until_it_goes_on() -> None:
    core = one_slot()
    assert runs(core.handle(CLIENT, execute("parent"), 0.0)) == [(NODE, "parent")]
    assert runs(core.handle(NODE, child("parent/0", "parent"), 0.1)) == []  # no slot free
    assert runs(core.handle(NODE, p.Waiting("parent", True), 0.2)) == [(NODE, "parent/0")]
    assert core.node("n")["waiting"] == 1 and core.node("n")["capacity"] == 1
    assert core.counter("waiting") == 1
    core.handle(NODE, ok("parent/0"), 0.3)
    core.handle(NODE, p.Waiting("parent", False), 0.4)
    assert core.node("n")["waiting"] == 0
    # Its slot is its own again: a new task waits for it.
    assert runs(core.handle(CLIENT, execute("next"), 0.5)) == []
    assert runs(core.handle(NODE, ok("parent"), 0.6)) == [(NODE, "next")]


def test_a_task_that_goes_on_while_its_slot_is_in_use_runs_over_until_one_ends() -> None:
    core = one_slot()
    core.handle(CLIENT, execute("parent"), 0.0)
    core.handle(NODE, p.Waiting("parent", True), 0.1)
    assert runs(core.handle(NODE, child("parent/0", "parent"), 0.2)) == [(NODE, "parent/0")]
    core.handle(NODE, p.Waiting("parent", False), 0.3)  # both run now: one over the slots
    assert runs(core.handle(CLIENT, execute("next"), 0.4)) == []
    assert runs(core.handle(NODE, ok("parent/0"), 0.5)) == []  # back to one slot, in use
    assert runs(core.handle(NODE, ok("parent"), 0.6)) == [(NODE, "next")]


def test_the_result_of_a_waiting_task_gives_its_lent_slot_back() -> None:
    core = one_slot()
    core.handle(CLIENT, execute("parent"), 0.0)
    core.handle(NODE, p.Waiting("parent", True), 0.1)
    core.handle(NODE, ok("parent"), 0.2)  # ended without saying it goes on
    assert core.node("n")["waiting"] == 0
    assert runs(core.handle(CLIENT, execute("a"), 0.3)) == [(NODE, "a")]
    assert runs(core.handle(CLIENT, execute("b"), 0.3)) == []


def test_waiting_for_a_task_the_node_does_not_run_is_ignored() -> None:
    core = one_slot()
    core.handle(CLIENT, execute("running"), 0.0)
    core.handle(b"other", register("other", capacity=1), 0.0)
    for task_id in ("unknown", "running"):
        assert core.handle(b"other", p.Waiting(task_id, True), 0.1) == []
    assert core.counter("ignored_waiting") == 2
    [refused] = core.handle(b"stranger", p.Waiting("running", True), 0.1)
    assert isinstance(refused.message, p.Disconnect)  # as to any message of a stranger


def test_cancelling_a_parent_cancels_its_pending_children_and_theirs() -> None:
    core = Core(SchedulerConfig(heartbeat_interval=100.0))
    core.handle(NODE, register("n", capacity=2), 0.0)
    core.handle(CLIENT, execute("parent"), 0.0)
    core.handle(NODE, p.Waiting("parent", True), 0.0)
    core.handle(NODE, child("parent/0", "parent"), 0.1)  # runs
    core.handle(NODE, child("parent/1", "parent"), 0.1)  # runs (the lent slot)
    core.handle(NODE, ok("parent/1"), 0.15)  # finished: left as it is
    core.handle(NODE, child("parent/2", "parent"), 0.2)  # runs in the freed slot
    core.handle(NODE, child("parent/2/0", "parent/2"), 0.2)  # queued
    sends = core.handle(CLIENT, p.Cancel("parent"), 0.3)
    answers = {m.task_id: m for m in completed(sends)}
    assert set(answers) == {"parent", "parent/0", "parent/2", "parent/2/0"}
    assert all(a.exit_code == p.EXIT_CANCELLED for a in answers.values())
    assert "parent/2, was cancelled" in (answers["parent/2/0"].error or p.ErrorInfo("", "")).message
    assert core.counter("cancelled_with_parent") == 3
    assert core.answered("parent/1") and core.scheduler.kept_answer("parent/1").exit_code == 0  # type: ignore[union-attr]


def test_a_parent_that_ends_leaves_its_children_running() -> None:
    core = Core(SchedulerConfig(heartbeat_interval=100.0))
    core.handle(NODE, register("n", capacity=2), 0.0)
    core.handle(CLIENT, execute("parent"), 0.0)
    core.handle(NODE, child("parent/0", "parent"), 0.1)
    core.handle(NODE, ok("parent"), 0.2)
    assert core.pending("parent/0")
    [answer] = completed(core.handle(NODE, ok("parent/0"), 0.3))
    assert answer.task_id == "parent/0" and answer.exit_code == 0
