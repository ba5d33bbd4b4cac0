"""The decisions of an elastic znode (node/scaling.py), as sequences of facts on a clock of
the test's own: no processes, no sleeps."""

from __future__ import annotations

import math

import pytest

from node.scaling import UP_EVERY, ScaleDown, Scaler, ScaleUp, Scaling
from node.supervision import Demand


def scaler(minimum: int = 1, maximum: int = 4, after: float = 2.0, threads: int = 1) -> Scaler:
    return Scaler(Scaling(minimum, maximum, after), threads)


@pytest.mark.parametrize(("minimum", "maximum", "after"), [(0, 1, 1.0), (3, 2, 1.0), (1, 2, 0.0)])
def test_scaling_refuses_what_cannot_work(minimum: int, maximum: int, after: float) -> None:
    with pytest.raises(ValueError):
        Scaling(minimum, maximum, after)


def test_a_backlog_adds_one_process_per_interval_up_to_the_maximum() -> None:
    s = scaler()
    s.started(0, 0.0)
    s.reported(0, Demand(False, None, 0, 0), 0.1)
    assert s.decide(0.5) == []  # registering: nothing known yet
    s.reported(0, Demand(True, 19, 1, 0), 1.0)
    assert s.decide(1.0) == [ScaleUp(2, 19)]
    s.started(1, 1.0)
    assert s.decide(1.2) == []  # one at a time
    assert s.next_deadline(1.2) == 1.0 + UP_EVERY
    assert s.decide(1.5) == [ScaleUp(3, 19)]  # the backlog keeps more than one more busy
    s.started(2, 1.5)
    s.reported(1, Demand(True, 17, 1, 0), 1.6)
    assert s.decide(2.0) == [ScaleUp(4, 17)]
    s.started(3, 2.0)
    assert s.count == 4
    assert s.decide(2.5) == [] and s.next_deadline(2.5) == math.inf  # the maximum


def test_no_more_processes_than_the_backlog_can_keep_busy() -> None:
    s = scaler(threads=4)
    s.started(0, 0.0)
    s.reported(0, Demand(True, 6, 4, 0), 0.1)  # two more processes' worth, at 4 tasks each
    assert s.decide(0.1) == [ScaleUp(2, 6)]
    s.started(1, 0.1)
    assert s.decide(0.6) == [ScaleUp(3, 6)]  # one starting takes 4 of the 6
    s.started(2, 0.6)
    assert s.decide(1.1) == []  # two starting take them all
    # Process 1 registers and takes 4: its hint, the latest, says 2 are left, which the
    # other starting process will take; process 0's older word (6) no longer counts.
    s.reported(1, Demand(True, 2, 4, 0), 1.2)
    assert s.backlog() == 2
    assert s.decide(1.7) == []


def test_the_latest_hint_wins_so_a_backlog_just_taken_adds_nobody() -> None:
    s = scaler()
    s.started(0, 0.0)
    s.reported(0, Demand(True, 1, 1, 0), 0.1)
    assert s.decide(0.1) == [ScaleUp(2, 1)]
    s.started(1, 0.1)
    s.reported(1, Demand(True, 0, 1, 0), 0.3)  # registered: it took the one waiting task
    assert s.backlog() == 0
    assert s.decide(0.6) == []  # though process 0 has not heard of it yet
    s.reported(0, Demand(True, 0, 1, 1), 1.1)
    assert s.decide(1.1) == []


def test_idle_processes_stop_after_the_idle_period_never_below_the_minimum() -> None:
    s = scaler(minimum=1, maximum=4, after=2.0)
    for index in range(3):
        s.started(index, 0.0)
        s.reported(index, Demand(True, 0, 1, 0), 0.1)
    s.reported(0, Demand(True, 0, 0, 1), 1.0)  # idle from 1.0
    s.reported(2, Demand(True, 0, 0, 1), 1.5)  # idle from 1.5; process 1 keeps working
    assert s.decide(2.9) == []
    assert s.next_deadline(2.9) == 3.0
    assert s.decide(3.0) == [ScaleDown(0, 2, 2.0)]
    assert s.count == 2 and s.next_deadline(3.0) == 3.5
    assert s.decide(3.5) == [ScaleDown(2, 1, 2.0)]
    s.reported(1, Demand(True, 0, 0, 1), 4.0)
    assert s.decide(10.0) == [] and s.next_deadline(10.0) == math.inf  # the minimum


def test_the_highest_numbered_idle_processes_go_first() -> None:
    s = scaler(minimum=2, maximum=4, after=1.0)
    for index in range(4):
        s.started(index, 0.0)
        s.reported(index, Demand(True, 0, 0, 0), 0.1)
    assert s.decide(1.0) == [ScaleDown(3, 3, 1.0), ScaleDown(2, 2, 1.0)]


def test_work_between_two_reports_counts_as_work() -> None:
    """A process that ran short tasks between two reports was never seen busy; its count of
    results says it worked."""
    s = scaler(after=2.0)
    s.started(0, 0.0)
    s.started(1, 0.0)
    s.reported(1, Demand(True, 0, 0, 1), 1.0)
    s.reported(1, Demand(True, 0, 0, 9), 2.5)  # idle again from 2.5, not from 1.0
    assert s.decide(3.5) == [ScaleDown(0, 1, 3.5)]  # the other one never worked at all
    assert s.decide(4.4) == [] and s.count == 1


def test_nothing_stops_while_tasks_wait() -> None:
    s = scaler(minimum=1, maximum=2, after=1.0)
    s.started(0, 0.0)
    s.started(1, 0.0)
    s.reported(0, Demand(True, 0, 0, 0), 0.1)  # idle
    s.reported(1, Demand(True, 3, 1, 0), 0.2)  # the latest word: 3 tasks wait
    assert s.decide(5.0) == [] and s.next_deadline(5.0) == math.inf


def test_tasks_held_beyond_the_slots_of_full_processes_wait_too() -> None:
    """With a prefetch window a busy process holds tasks it has no slot for: work that
    waits as much as the broker's backlog does."""
    s = scaler(threads=1)
    s.started(0, 0.0)
    s.reported(0, Demand(True, 2, 5, 0), 0.1)  # 1 running, 4 held, 2 more at the broker
    assert s.decide(0.1) == [ScaleUp(2, 2, 4)]
    s.started(1, 0.1)
    s.reported(1, Demand(True, 0, 1, 0), 0.3)  # it took the 2 (one held): none at the broker
    s.reported(0, Demand(True, 0, 4, 1), 0.4)
    assert s.decide(0.6) == [ScaleUp(3, 0, 3)]  # 3 held beyond their slots
    s.started(2, 0.6)
    s.reported(2, Demand(True, 0, 0, 0), 0.7)  # registered, and idle: a slot is free
    assert s.decide(1.1) == []  # the broker moves held tasks to a free slot itself
    assert s.decide(10.0) == []  # and nothing stops while they wait


def test_without_a_hint_processes_holding_waiting_tasks_ask_for_one_more() -> None:
    s = scaler(threads=2)
    s.started(0, 0.0)
    s.started(1, 0.0)
    s.reported(0, Demand(True, None, 2, 0), 0.1)
    s.reported(1, Demand(True, None, 1, 0), 0.1)
    assert s.decide(0.1) == []  # a slot is free
    s.reported(1, Demand(True, None, 5, 0), 0.2)  # full, and 3 tasks wait for its slots
    assert s.decide(0.2) == [ScaleUp(3, None, 3)]


def test_a_process_restarted_or_stopped_is_counted_anew() -> None:
    s = scaler(minimum=1, after=1.0)
    s.started(0, 0.0)
    s.started(1, 0.0)
    s.reported(1, Demand(True, 0, 0, 0), 0.1)
    s.started(1, 0.9)  # it crashed and was restarted: idle from its new start
    assert s.decide(1.5) == [ScaleDown(0, 1, 1.5)]
    s.reported(0, Demand(True, 7, 1, 0), 1.6)  # from a process being stopped: ignored
    assert s.backlog() is None and s.count == 1
    s.gone(1)
    assert s.count == 0
