"""Prefetch windows and taking held tasks back (protocol.md 5.5), in the pure core."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Send, StopRequested
from tests.unit.core import Core, completed, execute, ok, runs

CLIENT = b"client-1"


def node(name: str, capacity: int = 1, prefetch: int = 2) -> p.Register:
    return p.Register(name, "h", 1, ("f",), capacity, None, prefetch)


def retracts(sends: list[Send]) -> list[tuple[bytes, tuple[str, ...]]]:
    return [(s.peer, s.message.task_ids) for s in sends if isinstance(s.message, p.Retract)]


def warmed(core: Core, name: str, capacity: int = 1, prefetch: int = 2) -> None:
    """Register a node and let it answer 50 tasks at once: its run time per task falls
    near 0, so it may hold its whole prefetch window."""
    identity = name.encode()
    core.handle(identity, node(name, capacity, prefetch), 0.0)
    for i in range(50):
        [(_, task_id)] = runs(core.handle(CLIENT, execute(f"warm-{name}-{i}"), 0.0))
        core.handle(identity, ok(task_id), 0.0)


def test_a_node_holds_its_window_and_a_slot_starts_the_oldest_held_task() -> None:
    core = Core()
    warmed(core, "a", capacity=1, prefetch=2)
    sent = [runs(core.handle(CLIENT, execute(f"t{i}"), 0.1)) for i in range(4)]
    assert sent == [[(b"a", "t0")], [(b"a", "t1")], [(b"a", "t2")], []]
    assert core.node("a")["held"] == 2 and core.queued() == 1
    assert core.status()["running"] == 1 and core.status()["held"] == 2
    # t0 answered: t1 starts in the slot, and t3 fills the window.
    assert runs(core.handle(b"a", ok("t0"), 0.1)) == [(b"a", "t3")]
    assert core.status()["running"] == 1 and core.status()["held"] == 2


def test_a_node_holds_about_ten_milliseconds_of_work() -> None:
    """One task beyond its slots until its tasks prove short; fewer again as they slow."""
    core = Core()
    core.handle(b"a", node("a", capacity=1, prefetch=8), 0.0)
    for i in range(20):
        core.handle(CLIENT, execute(f"t{i}"), 0.0)
    assert core.node("a")["held"] == 1
    now = 0.0
    for i in range(40):  # answered at once: its window grows to 1 + 8
        core.handle(b"a", ok(f"t{i}"), now)
        if i < 19:
            core.handle(CLIENT, execute(f"t{i + 20}"), now)
    assert core.node("a")["held"] == 0  # all answered but the last ones
    for i in range(60, 80):
        core.handle(CLIENT, execute(f"t{i}"), now)
    assert core.node("a")["held"] == 8
    for i in range(60, 75):  # each took a second: it holds one again
        now += 1.0
        core.handle(b"a", ok(f"t{i}"), now)
    assert core.node("a")["held"] == 1


def test_the_broker_grants_at_most_its_max_prefetch_and_zero_turns_it_off() -> None:
    core = Core(SchedulerConfig(max_prefetch=1))
    core.handle(b"a", node("a", prefetch=16), 0.0)
    assert core.node("a")["prefetch"] == 1
    off = Core(SchedulerConfig(max_prefetch=0))
    off.handle(b"a", node("a", prefetch=16), 0.0)
    assert [runs(off.handle(CLIENT, execute(f"t{i}"), 0.1)) for i in range(2)] == [
        [(b"a", "t0")],
        [],
    ]


def test_an_idle_node_takes_back_half_of_what_another_holds() -> None:
    core = Core()
    warmed(core, "a", prefetch=4)
    for i in range(5):
        core.handle(CLIENT, execute(f"t{i}"), 0.1)  # t0 runs on a, t1..t4 held
    sends = core.handle(b"b", node("b", prefetch=4), 0.2)
    assert retracts(sends) == [(b"a", ("t4", "t3"))]  # newest first
    # a gives both back: they run on b with their attempt undone (still attempt 1).
    sends = core.handle(b"a", p.Retracted(("t4", "t3"), ()), 0.3)
    placed = [s.message for s in sends if isinstance(s.message, p.Run)]
    assert sorted(r.task_id for r in placed) == ["t3", "t4"]
    assert {s.peer for s in sends if isinstance(s.message, p.Run)} == {b"b"}
    assert all(r.attempt == 1 for r in placed)
    assert core.counter("retracted") == 2 and core.node("a")["held"] == 2


def test_a_task_started_before_the_retract_arrived_runs_where_it_is() -> None:
    core = Core()
    warmed(core, "a")
    for i in range(3):
        core.handle(CLIENT, execute(f"t{i}"), 0.1)
    assert retracts(core.handle(b"b", node("b", prefetch=2), 0.2)) == [(b"a", ("t2",))]
    # a finished t0 and started t1 and t2 before the RETRACT came (a node that ran ahead).
    core.handle(b"a", ok("t0"), 0.3)
    sends = core.handle(b"a", p.Retracted((), ("t2",)), 0.4)
    assert runs(sends) == []
    assert core.node("a")["held"] == 0 and core.status()["running"] == 2
    answers = completed(core.handle(b"a", ok("t2"), 0.5))
    assert [(c.task_id, c.attempts) for c in answers] == [("t2", 1)]


def test_held_tasks_of_a_lost_node_run_elsewhere_counting_only_those_that_may_have_run() -> None:
    """a ran one task and held forty. The slot may have started held tasks before their
    RESULTs came: the oldest, one for the slot and RESULTS_HELD_BACK more for results a node
    may hold back, keep their attempts counted; the others' are undone."""
    core = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    held = p.RESULTS_HELD_BACK + 8
    warmed(core, "a", prefetch=held)
    for i in range(1 + held):
        core.handle(CLIENT, execute(f"t{i}"), 0.1)
    assert core.node("a")["held"] == held
    core.lost(b"a", 0.3)  # a send to `a` failed, and no process replaced it: it is lost
    kept = 1 + p.RESULTS_HELD_BACK
    assert core.attempt("t0") == 1  # it ran on a: that attempt counts (its retry waits)
    attempts = [core.attempt(f"t{i}") for i in range(1, 1 + held)]
    assert attempts == [1] * kept + [0] * (held - kept)
    assert core.counter("requeued_unstarted") == held
    # A node that registers now runs them; the undone ones start again as attempt 1.
    sends = core.handle(b"b", p.Register("b", "h", 2, ("f",), 2), 0.4)  # no prefetch
    assert [task_id for _, task_id in runs(sends)] == ["t1", "t2"]
    assert core.attempt("t1") == 2


def test_a_crashed_process_fails_only_the_task_it_ran() -> None:
    core = Core()
    warmed(core, "a")
    for i in range(3):
        core.handle(CLIENT, execute(f"t{i}", retries=0), 0.1)
    gone = p.Replaces(1, "killed by signal 9 (SIGKILL)")
    sends = core.handle(b"a2", p.Register("a", "h", 2, ("f",), 1, gone, 2), 0.2)
    sends += core.tick(0.2 + core.config.heartbeat_interval)  # its last RESULTs did not come
    answers = completed(sends)
    assert [(c.task_id, c.exit_code) for c in answers] == [("t0", p.EXIT_WORKER_CRASHED)]
    assert sorted(t for _, t in runs(sends)) == ["t1", "t2"]


def test_a_held_task_past_its_queue_timeout_is_asked_back_and_expires() -> None:
    core = Core()
    core.handle(b"a", node("a", prefetch=2), 0.0)
    core.handle(CLIENT, execute("long"), 0.0)
    core.handle(CLIENT, execute("short", queue_timeout=1.0), 0.0)
    assert core.node("a")["held"] == 1
    assert retracts(core.tick(1.0)) == [(b"a", ("short",))]
    answers = completed(core.handle(b"a", p.Retracted(("short",), ()), 1.1))
    assert [(c.task_id, c.exit_code, c.attempts) for c in answers] == [("short", p.EXIT_EXPIRED, 0)]


def test_a_result_for_a_task_counted_as_held_is_its_answer() -> None:
    """Results of tasks finished together may arrive before the one that freed the slot."""
    core = Core()
    core.handle(b"a", node("a", prefetch=2), 0.0)
    for i in range(2):
        core.handle(CLIENT, execute(f"t{i}"), 0.1)
    answers = completed(core.handle(b"a", p.Batch((ok("t1"), ok("t0"))), 0.2))
    assert sorted(c.task_id for c in answers) == ["t0", "t1"]
    assert core.node("a")["active"] == 0


def test_a_stopping_broker_asks_for_held_tasks_back_and_keeps_them_queued() -> None:
    core = Core()
    warmed(core, "a")
    for i in range(3):
        core.handle(CLIENT, execute(f"t{i}"), 0.1)
    assert retracts(core.event(StopRequested(), 0.2)) == [(b"a", ("t2", "t1"))]
    assert runs(core.handle(b"a", p.Retracted(("t2", "t1"), ()), 0.3)) == []
    assert core.queued() == 2 and core.status()["running"] == 1
