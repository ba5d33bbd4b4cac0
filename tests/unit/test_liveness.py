"""When a silent node is dead (broker.core.liveness): not while messages wait unread, and
not for the time the broker's own loop stalled; a node that really died is still found."""

from __future__ import annotations

import math

from broker import protocol as p
from broker.core.config import RetryPolicy, SchedulerConfig
from broker.core.liveness import LoopClock
from broker.protocol import STALL_MIN
from tests.unit.core import Core, execute, register, runs

CLIENT = b"client-1"
EXPIRY = 3.0  # the default interval (1 s) x liveness (3)


def two_nodes_one_task() -> Core:
    """n1 runs t1 (registered at 0); n2 is registered too, heard at 2.9."""
    # No retry backoff: a lost node's task runs elsewhere at once.
    core = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0)))
    core.handle(b"n1", register("n1"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"n2", register("n2"), 0.0)
    core.handle(b"n2", p.Heartbeat(), 2.9)
    assert runs(core.tick(2.9)) == []
    return core


def test_a_silent_node_is_not_declared_dead_while_messages_wait_unread() -> None:
    core = two_nodes_one_task()
    assert runs(core.tick(3.1, unread=True)) == []  # its heartbeat may be among them
    assert core.registered(b"n1")
    core.handle(b"n1", p.Heartbeat(), 3.11)  # it was: read now
    core.handle(b"n2", p.Heartbeat(), 3.11)
    assert runs(core.tick(3.2)) == []
    assert core.registered(b"n1") and core.counter("nodes_expired") == 0


def test_a_node_silent_with_nothing_unread_is_declared_dead_at_once() -> None:
    core = two_nodes_one_task()
    assert runs(core.tick(3.1, unread=True)) == []
    assert core.next_deadline() <= 3.1 + 0.011  # judged again as soon as read
    assert runs(core.tick(3.12)) == [(b"n2", "t1")]
    assert not core.registered(b"n1")


def test_input_that_never_stops_coming_delays_a_death_by_one_expiry_at_most() -> None:
    core = two_nodes_one_task()
    now = 3.1
    while core.registered(b"n1"):
        core.handle(b"n2", p.Heartbeat(), now)
        core.tick(now, unread=True)
        now = round(now + 0.05, 3)
        assert now <= 2 * EXPIRY + 0.1, "n1 was never declared dead"
    assert now > 2 * EXPIRY - 0.1


def test_the_nodes_silence_during_a_stall_of_the_broker_is_not_held_against_them() -> None:
    core = two_nodes_one_task()
    # The loop stalled from 3.0 to 5.5: n1's heartbeat of 2.95 and n2's of 5.0 come late.
    core.handle(b"n1", p.Heartbeat(), 2.95)
    assert runs(core.tick(5.5, stall=2.5)) == []
    assert core.registered(b"n1") and core.registered(b"n2")
    assert core.counter("loop_stalls") == 1 and core.counter("loop_stalled_ms") == 2500
    core.handle(b"n1", p.Heartbeat(), 5.6)
    assert runs(core.tick(6.0)) == []
    assert core.counter("nodes_expired") == 0


def test_a_node_that_died_during_a_stall_is_found_one_expiry_after_its_last_word() -> None:
    core = two_nodes_one_task()
    core.handle(b"n1", p.Heartbeat(), 2.95)  # its last
    assert runs(core.tick(5.5, stall=2.5)) == []  # 0.05 s of its silence counts so far
    for now in (6.0, 7.0, 8.0):
        core.handle(b"n2", p.Heartbeat(), now)
        assert runs(core.tick(now)) == []
    deadline = 2.95 + EXPIRY + 2.5  # its last word, the expiry, the stall
    assert core.next_deadline() <= deadline
    core.handle(b"n2", p.Heartbeat(), deadline)
    assert runs(core.tick(deadline + 0.001)) == [(b"n2", "t1")]
    assert core.counter("nodes_expired") == 1


def test_the_loop_clock_measures_stalls_as_lateness_of_the_timers() -> None:
    clock = LoopClock()
    assert clock.stall(1.0, 1.001) == 0.0  # on time
    assert clock.stall(1.2, 1.2 + STALL_MIN / 2) == 0.0  # a busy moment, not a stall
    assert clock.stall(2.0, 4.5) == 2.5
    # Timers due before the last tick were late already: counted once.
    assert clock.stall(3.0, 4.6) == 0.0
    assert clock.stall(-math.inf, 9.0) == 0.0  # deferred work: nothing to measure
