"""The slots of a node process, with real threads and functions that wait on events:
what both kinds do behind the one interface, ThreadSlots' backlog and overdue tasks, and
when the InlineSlot watchdog acts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.protocol import Result, Run, decode, dumps_payload
from node.slots import SlotHooks, Slots, open_slots
from node.slots.cancelled import CancelledTasks
from node.slots.inline import InlineSlot
from node.slots.threads import ThreadSlots
from tests.support import wait_until

RELEASE = threading.Event()  # what `block` waits for


def block(seconds: float) -> str:
    RELEASE.wait(seconds)
    return "released"


FUNCTIONS: dict[str, Callable[..., Any]] = {"block": block, "echo": lambda value: value}


@pytest.fixture(autouse=True)
def released() -> Iterator[None]:
    RELEASE.clear()
    yield
    RELEASE.set()  # let every slot thread of the test finish


def run(
    task_id: str,
    function: str = "block",
    *args: Any,
    task_timeout: float | None = None,
    attempt: int = 1,
) -> Run:
    return Run(task_id, function, dumps_payload(list(args or [10])), attempt, task_timeout)


def results(slots: Slots) -> dict[str, Result]:
    found: dict[str, Result] = {}
    for frames in slots.take_results():
        msg = decode(frames)
        items = getattr(msg, "items", (msg,))
        found.update({r.task_id: r for r in items if isinstance(r, Result)})
    return found


def collect(slots: Slots, woken: threading.Event, want: int) -> dict[str, Result]:
    """Take results as the slot threads announce them until `want` have come."""
    got: dict[str, Result] = {}

    def enough() -> bool:
        if woken.wait(0.05):
            woken.clear()
            got.update(results(slots))
        return len(got) >= want

    wait_until(enough, 5, what=f"{want} results", interval=0)
    return got


class Hooks:
    """SlotHooks that record what the slots asked of the agent."""

    def __init__(self, heartbeat_in: float = 60.0) -> None:
        self.heartbeat_in = heartbeat_in
        self.woken = threading.Event()
        self.kept_alive: list[float] = []
        self.overdue: list[tuple[float, Run]] = []
        self.looks = 0  # how often the watchdog computed when to wake

    def keep_alive(self) -> None:
        self.kept_alive.append(time.monotonic())

    def next_heartbeat(self) -> float:
        self.looks += 1
        return time.monotonic() + self.heartbeat_in

    def on_overdue(self, msg: Run) -> None:
        self.overdue.append((time.monotonic(), msg))
        RELEASE.set()  # the agent would end the process here; the test lets the call return

    def slot_hooks(self) -> SlotHooks:
        return SlotHooks(self.woken.set, self.keep_alive, self.next_heartbeat, self.on_overdue)


@pytest.mark.parametrize("threads", [1, 3], ids=["inline", "threads"])
def test_both_kinds_run_tasks_and_echo_the_attempt(threads: int) -> None:
    hooks = Hooks()
    slots = open_slots(FUNCTIONS, threads, hooks.slot_hooks())
    slots.start()
    assert (slots.capacity, slots.busy, slots.next_deadline) == (threads, 0, math.inf)
    slots.submit(run("a", "echo", 7, attempt=3))
    if not slots.runnable:  # it runs in a slot thread: its result comes when announced
        got: object = collect(slots, hooks.woken, 1)["a"]
    else:
        got = decode(slots.run_next(math.inf))
        assert slots.take_results() == []
    assert got == Result("a", 0, b"7", None, attempt=3)
    assert slots.busy == 0 and slots.expire(time.monotonic() + 3600) == []
    slots.close(wait=1.0)


def test_thread_slots_hold_tasks_beyond_their_capacity() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 2, woken.set)
    slots.start()
    for task_id in ("a", "b", "c"):
        slots.submit(run(task_id))
    assert (slots.busy, slots.free_count, sorted(slots.running)) == (3, 0, ["a", "b"])
    RELEASE.set()
    got = collect(slots, woken, 3)
    assert {r.result for r in got.values()} == {b'"released"'}
    assert slots.busy == 0 and slots.free_count == 2
    slots.close(wait=1.0)


def test_thread_slots_lend_a_waiting_tasks_slot_and_run_over_until_tasks_end() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 1, woken.set)
    slots.start()
    for task_id in ("parent", "child", "later"):
        slots.submit(run(task_id))
    assert sorted(slots.running) == ["parent"] and slots.held == 2
    assert not slots.lend("child")  # held, not running: nothing to lend
    assert slots.lend("parent")  # one more slot thread: the oldest held task starts
    assert sorted(slots.running) == ["child", "parent"] and slots.held == 1
    assert slots.reclaim("parent") and not slots.reclaim("parent")
    # Two run on one slot now: the held task waits until both have ended.
    assert slots.capacity == 1 and slots.free_count == -1 and slots.held == 1
    slots.submit(run("newer"))
    assert results(slots) == {} and slots.held == 2  # nothing ended: nothing starts
    RELEASE.set()
    got = collect(slots, woken, 4)
    assert sorted(got) == ["child", "later", "newer", "parent"]
    slots.close(wait=1.0)


def test_thread_slots_expire_an_overdue_task_and_drop_its_late_result() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 2, woken.set)
    slots.start()
    slots.submit(run("late", task_timeout=0.05))
    slots.submit(run("untimed", "echo", 1))
    started = time.monotonic()
    assert slots.next_deadline == pytest.approx(started + 0.05, abs=0.05)
    assert slots.expire(started) == []
    [late] = slots.expire(started + 0.1)
    assert late.task_id == "late"
    # Answered by the caller now, its thread still inside the function: not busy, not free.
    assert slots.next_deadline == math.inf
    assert "late" not in slots.running and slots.free_count == 2 - len(slots.running) - 1
    assert list(collect(slots, woken, 1)) == ["untimed"]
    RELEASE.set()
    wait_until(lambda: woken.wait(0.05), 5, what="the late function to return", interval=0)
    assert results(slots) == {}  # its own result is dropped: it was answered already
    assert slots.free_count == 2
    slots.close(wait=1.0)


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_held_tasks_run_in_order_and_a_retract_gives_back_those_not_started(
    threads: int,
) -> None:
    hooks = Hooks()
    slots = open_slots(FUNCTIONS, threads, hooks.slot_hooks())
    slots.start()
    for task_id in ("a", "b", "c", "d"):
        slots.submit(run(task_id, "echo", 1))
    held = 4 if threads == 1 else 2  # slot threads start the first two at once
    assert slots.held == held and slots.busy == 4
    returned, started = slots.retract(("d", "a", "x"))
    if threads == 1:  # nothing started yet: the socket thread runs them one by one
        assert (returned, started, slots.held) == (["d", "a"], ["x"], 2)
        order = [decode(slots.run_next(math.inf)) for _ in range(2)]
        assert [r.task_id for r in order] == ["b", "c"] and not slots.runnable  # type: ignore[union-attr]
    else:  # "a" started in a slot thread
        assert (returned, started, slots.held) == (["d"], ["a", "x"], 1)
        assert sorted(collect(slots, hooks.woken, 3)) == ["a", "b", "c"]
    assert slots.busy == 0 and slots.drop_held() == 0
    slots.close(wait=1.0)


def test_dropping_held_tasks_forgets_them() -> None:
    slot = InlineSlot(FUNCTIONS, lambda: None, lambda: math.inf, lambda run: None)
    for task_id in ("a", "b"):
        slot.submit(run(task_id))
    assert slot.drop_held() == 2 and slot.busy == 0 and not slot.runnable


def watched(hooks: Hooks) -> InlineSlot:
    """An InlineSlot with recording hooks, started as the agent starts it."""
    slot = InlineSlot(FUNCTIONS, hooks.keep_alive, hooks.next_heartbeat, hooks.on_overdue)
    slot.start()
    return slot


def test_inline_watchdog_acts_on_a_task_at_its_deadline() -> None:
    hooks = Hooks(heartbeat_in=60.0)
    slot = watched(hooks)
    started = time.monotonic()
    frames = at_once(slot, run("late", task_timeout=0.2, attempt=2))
    [(at, msg)] = hooks.overdue
    assert msg.task_id == "late" and 0.2 <= at - started < 0.4
    # The hook would have ended the process; here it let the call return.
    assert decode(frames) == Result("late", 0, b'"released"', attempt=2)
    slot.close(wait=1.0)


def test_inline_watchdog_looks_every_running_poll_but_not_once_per_task() -> None:
    """While tasks run the watchdog looks at the socket every RUNNING_POLL, so that a STOP
    for the running task is seen in time; a stream of short tasks does not wake it once
    each, and neither do deadlines later than its alarm."""
    hooks = Hooks(heartbeat_in=5.0)
    slot = watched(hooks)
    wait_until(lambda: hooks.looks, 2)
    looks = hooks.looks
    started = time.monotonic()
    for _ in range(2000):
        at_once(slot, run("quick", "echo", 1, task_timeout=30.0))
    elapsed = time.monotonic() - started
    woken = hooks.looks - looks
    # The first task wakes it once; then it looks every RUNNING_POLL while tasks start. (A
    # few more on a busy machine, where the OS may pause the watchdog while it computes its
    # alarm, and a task started then wakes it.)
    assert woken <= 10 + elapsed / InlineSlot.RUNNING_POLL, f"{woken} wake-ups in {elapsed:.3f} s"
    # A long call: it acts (the agent's keep_alive reads the socket) every RUNNING_POLL.
    threading.Timer(0.7, RELEASE.set).start()
    at_once(slot, run("long"))
    assert 2 <= len(hooks.kept_alive) <= 7, hooks.kept_alive
    assert hooks.overdue == []
    slot.close(wait=1.0)


def test_inline_watchdog_keeps_the_link_alive_during_a_long_call() -> None:
    hooks = Hooks(heartbeat_in=0.05)
    slot = watched(hooks)
    threading.Timer(0.4, RELEASE.set).start()
    at_once(slot, run("long"))
    assert 3 <= len(hooks.kept_alive) <= 12
    assert hooks.overdue == []
    slot.close(wait=1.0)


def test_a_poke_makes_the_inline_watchdog_act_during_a_call() -> None:
    hooks = Hooks(heartbeat_in=60.0)  # no heartbeat due: only the poke wakes the watchdog
    slot = watched(hooks)

    def poke_then_release() -> None:
        slot.poke()
        wait_until(lambda: hooks.kept_alive, 5, what="the watchdog to act")
        RELEASE.set()

    started = time.monotonic()  # (before the timer starts counting its 0.1 s)
    threading.Timer(0.1, poke_then_release).start()
    at_once(slot, run("long"))
    # It acted during the call (the agent's keep_alive deregisters when a stop was asked).
    [at] = hooks.kept_alive
    assert at - started >= 0.1
    slot.close(wait=1.0)


def test_the_inline_watchdog_sends_waiting_results_when_a_long_call_follows() -> None:
    """Results of short tasks wait to leave together; a long task after them must not hold
    them back: by `flush_at` the watchdog acts (the agent's keep_alive sends them)."""
    hooks = Hooks(heartbeat_in=60.0)
    slot = watched(hooks)
    threading.Timer(0.5, RELEASE.set).start()
    slot.submit(run("long"))
    started = time.monotonic()
    slot.run_next(started + 0.05)
    [at] = hooks.kept_alive[:1]
    assert 0.04 <= at - started < 0.4
    slot.close(wait=1.0)


def at_once(slot: InlineSlot, task: Run) -> list[bytes]:
    """Hold `task` and run it now, as the agent's loop does; its RESULT frames."""
    slot.submit(task)
    return slot.run_next(math.inf)


def test_thread_slots_cancel_drops_held_tasks_and_gives_up_running_ones() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 2, woken.set)
    slots.start()
    for task_id in ("a", "b", "c", "d"):
        slots.submit(run(task_id))
    cancelled = slots.cancel(("d", "a", "x", "d"))
    assert [r.task_id for r in cancelled.held] == ["d"]
    assert [r.task_id for r in cancelled.running] == ["a"]
    assert not cancelled.ends_process  # the slot threads carry on; the agent restarts later
    # "a" counts as answered, its thread still inside the function: not busy, not free.
    assert (slots.busy, slots.held, slots.free_count) == (2, 1, 0)
    RELEASE.set()
    assert sorted(collect(slots, woken, 2)) == ["b", "c"]  # no result for "a" or "d"
    wait_until(lambda: slots.free_count == 2, 5, what="the slots to free")
    assert results(slots) == {}
    slots.close(wait=1.0)


def test_inline_cancel_drops_held_tasks_between_calls() -> None:
    slot = InlineSlot(FUNCTIONS, lambda: None, lambda: math.inf, lambda run: None)
    for task_id in ("a", "b", "c"):
        slot.submit(run(task_id, "echo", 1))
    cancelled = slot.cancel(("c", "a", "x"))
    assert [r.task_id for r in cancelled.held] == ["c", "a"]
    assert (cancelled.running, cancelled.ends_process) == ([], False)
    assert slot.busy == 1


def test_inline_cancel_of_the_running_task_asks_to_end_the_process() -> None:
    """The watchdog reads a STOP during the call (through the agent's keep_alive): the
    running task can be stopped only by ending the process."""
    hooks = Hooks(heartbeat_in=60.0)  # the watchdog looks every RUNNING_POLL, not for these
    seen: list[CancelledTasks] = []

    def stop_during_the_call() -> None:
        if not seen:
            seen.append(slot.cancel(("held", "long")))
            RELEASE.set()  # the agent would end the process here

    hooks.keep_alive = stop_during_the_call  # type: ignore[method-assign]
    slot = watched(hooks)
    slot.submit(run("long"))
    slot.submit(run("held", "echo", 1))
    started = time.monotonic()
    slot.run_next(math.inf)
    assert time.monotonic() - started < 1.0, "the watchdog did not look during the call"
    [cancelled] = seen
    assert [r.task_id for r in cancelled.held] == ["held"]
    assert [r.task_id for r in cancelled.running] == ["long"]
    assert cancelled.ends_process
    assert not slot.runnable
    slot.close(wait=1.0)
