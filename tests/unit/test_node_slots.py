"""The slots of a node process, with real threads and functions that wait on events:
ThreadSlots' backlog and timed-out tasks, and when the InlineSlot watchdog acts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.protocol import Result, Run, decode, dumps_payload
from node.executor import ThreadSlots
from node.inline import InlineSlot
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


def run(task_id: str, function: str = "block", *args: Any, timeout: float | None = None) -> Run:
    return Run(task_id, function, dumps_payload(list(args or [10])), 1, timeout)


def results(slots: ThreadSlots) -> dict[str, Result]:
    found: dict[str, Result] = {}
    for frames in slots.take_results():
        msg = decode(frames)
        items = getattr(msg, "items", (msg,))
        found.update({r.task_id: r for r in items if isinstance(r, Result)})
    return found


def collect(slots: ThreadSlots, woken: threading.Event, want: int) -> dict[str, Result]:
    """Take results as the slot threads announce them until `want` have come."""
    got: dict[str, Result] = {}

    def enough() -> bool:
        if woken.wait(0.05):
            woken.clear()
            got.update(results(slots))
        return len(got) >= want

    wait_until(enough, 5, what=f"{want} results", interval=0)
    return got


def test_thread_slots_hold_tasks_beyond_their_capacity() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 2, woken.set)
    slots.start()
    for task_id in ("a", "b", "c"):
        slots.submit(run(task_id))
    assert (slots.busy, slots.free_count, sorted(slots.running)) == (3, 0, ["a", "b"])
    RELEASE.set()
    got = collect(slots, woken, 3)
    assert {r.payload for r in got.values()} == {b'"released"'}
    assert slots.busy == 0 and slots.free_count == 2
    slots.close()


def test_thread_slots_expire_a_timed_task_and_drop_its_late_result() -> None:
    woken = threading.Event()
    slots = ThreadSlots(FUNCTIONS, 2, woken.set)
    slots.start()
    slots.submit(run("late", timeout=0.05))
    slots.submit(run("untimed", "echo", 1))
    started = time.monotonic()
    assert slots.deadlines.next_due == pytest.approx(started + 0.05, abs=0.05)
    assert slots.expire(started) == []
    [late] = slots.expire(started + 0.1)
    assert late.task_id == "late"
    # Answered by the caller now, its thread still inside the function: not busy, not free.
    assert slots.deadlines.next_due == math.inf
    assert "late" not in slots.running and slots.free_count == 2 - len(slots.running) - 1
    assert list(collect(slots, woken, 1)) == ["untimed"]
    RELEASE.set()
    wait_until(lambda: woken.wait(0.05), 5, what="the late function to return", interval=0)
    assert results(slots) == {}  # its own result is dropped: it was answered already
    assert slots.free_count == 2
    slots.close()


class Watched:
    """An InlineSlot with recording callbacks, started as the agent starts it."""

    def __init__(self, heartbeat_in: float) -> None:
        self.heartbeat_in = heartbeat_in
        self.kept_alive: list[float] = []
        self.timed_out: list[tuple[float, Run]] = []
        self.looks = 0  # how often the watchdog computed when to wake
        self.slot = InlineSlot(FUNCTIONS, self.keep_alive, self.next_heartbeat, self.on_timeout)
        self.slot.start()

    def keep_alive(self) -> None:
        self.kept_alive.append(time.monotonic())

    def next_heartbeat(self) -> float:
        self.looks += 1
        return time.monotonic() + self.heartbeat_in

    def on_timeout(self, msg: Run) -> None:
        self.timed_out.append((time.monotonic(), msg))
        RELEASE.set()  # the agent would end the process here; the test lets the call return


def test_inline_watchdog_stops_a_task_at_its_deadline() -> None:
    watched = Watched(heartbeat_in=60.0)
    started = time.monotonic()
    frames = watched.slot.run(run("late", timeout=0.2))
    [(at, msg)] = watched.timed_out
    assert msg.task_id == "late" and 0.2 <= at - started < 0.4
    assert decode(frames) == Result("late", 0, b'"released"')  # the call did return here
    watched.slot.close()


def test_inline_watchdog_wakes_only_for_a_deadline_sooner_than_its_own() -> None:
    watched = Watched(heartbeat_in=5.0)
    wait_until(lambda: watched.looks, 2)
    looks = watched.looks
    threading.Timer(0.3, RELEASE.set).start()
    watched.slot.run(run("untimed"))
    for _ in range(1000):
        watched.slot.run(run("quick", "echo", 1, timeout=30.0))  # after its next heartbeat
    assert watched.looks == looks, "the watchdog woke for tasks that did not need it"
    for _ in range(1000):
        watched.slot.run(run("short", "echo", 1, timeout=2.0))
    # Sooner than its alarm: it wakes to move the alarm to about 2 s from now, which the
    # later tasks' deadlines do not beat. (Not exactly once: on a busy machine the OS may
    # pause the watchdog while it computes its alarm, and a task started then wakes it.)
    wait_until(lambda: watched.looks > looks, 2, what="the watchdog to move its alarm")
    assert watched.looks <= looks + 10, "the watchdog woke for every task"
    assert watched.timed_out == []
    watched.slot.close()


def test_inline_watchdog_keeps_the_link_alive_during_a_long_call() -> None:
    watched = Watched(heartbeat_in=0.05)
    threading.Timer(0.4, RELEASE.set).start()
    watched.slot.run(run("long"))
    assert 3 <= len(watched.kept_alive) <= 12
    assert watched.timed_out == []
    watched.slot.close()
