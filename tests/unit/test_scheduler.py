"""Scenario tests of the sans-IO scheduler: exact commands out for events in, no sockets."""

from __future__ import annotations

import pytest

from broker import protocol as p
from broker.core.config import (
    LEAST_LOADED,
    ROUND_ROBIN,
    ResultsConfig,
    RetryPolicy,
    SchedulerConfig,
)
from broker.core.events import Send, Stopped
from broker.core.results import ResultCache
from broker.core.tasks import TaskState
from tests.unit.core import Core, execute, ok, register, runs

CLIENT = b"client-1"
OTHER_CLIENT = b"client-2"


@pytest.fixture
def sched() -> Core:
    # No backoff here: a failed or orphaned task is requeued at once (backoff has its tests).
    return Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0)))


def test_register_answers_registered_with_heartbeat_settings(sched: Core) -> None:
    sends = sched.handle(b"n1", register("n1"), 0.0)
    assert sends == [Send(b"n1", p.Registered(b"n1".hex(), 1.0, 3, 0))]


def test_execute_runs_on_a_node_and_result_goes_back_to_the_client(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sends = sched.handle(CLIENT, execute("t1"), 0.1)
    assert sends == [Send(b"n1", p.Run("t1", "f", b"[1,2]", 1))]
    sends = sched.handle(b"n1", ok("t1", b"42"), 0.2)
    assert sends == [Send(CLIENT, p.TaskCompleted("t1", 0, b"42", None, 1))]
    assert sched.scheduler.pending() == []


def test_the_answer_leaves_first_and_sent_does_the_bookkeeping(sched: Core) -> None:
    """The server sends what a RESULT causes before `Sent` keeps the answer and refills the
    freed slot (the next queued task's RUN comes after `Sent`)."""
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    sched.handle(OTHER_CLIENT, execute("t2"), 0.1)  # queued: the one slot is busy
    sends = sched.receive(b"n1", ok("t1", b"42"), 0.2)
    assert sends == [Send(CLIENT, p.TaskCompleted("t1", 0, b"42", None, 1))]
    assert not sched.answered("t1") and sched.counter("completed") == 0
    assert sched.scheduler.deferred  # keep the answer, refill the slot
    assert sched.sent(0.2) == [Send(b"n1", p.Run("t2", "f", b"[1,2]", 1))]
    assert sched.answered("t1") and sched.counter("completed") == 1
    assert sched.sent(0.2) == []  # nothing is done twice


def test_a_failure_frees_its_slot_before_its_retry_is_placed(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    sends = sched.receive(b"n1", p.Result("t1", p.EXIT_WORKER_CRASHED, b"null"), 0.2)
    assert runs(sends) == [(b"n1", "t1")]  # retried at once, on the slot it freed
    assert sched.sent(0.2) == []


def test_unknown_function_is_refused_at_once(sched: Core) -> None:
    sched.handle(b"n1", register("n1", ("f",)), 0.0)
    [send] = sched.handle(CLIENT, execute("t1", "nope"), 0.1)
    assert isinstance(send.message, p.TaskCompleted)
    assert send.message.exit_code == p.EXIT_UNKNOWN_FUNCTION
    assert send.message.error is not None and "'nope'" in send.message.error.message
    assert sched.scheduler.pending() == []


def test_task_waits_for_a_free_slot_then_the_idle_node_takes_it(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    assert sched.handle(CLIENT, execute("t2"), 0.1) == []
    assert sched.queued() == 1
    sends = sched.handle(b"n1", ok("t1"), 0.2)
    assert runs(sends) == [(b"n1", "t2")]


def test_higher_priority_first_and_fifo_within_a_priority(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("busy"), 0.0)
    for task_id, priority in [("low", 1), ("high-a", 9), ("mid", 5), ("high-b", 9)]:
        sched.handle(CLIENT, execute(task_id, priority=priority), 0.1)
    order = []
    current = "busy"
    for _ in range(4):
        [(_, current)] = runs(sched.handle(b"n1", ok(current), 0.2))
        order.append(current)
    assert order == ["high-a", "high-b", "mid", "low"]


def test_least_loaded_prefers_the_emptier_node_per_capacity() -> None:
    sched = Core(SchedulerConfig(strategy=LEAST_LOADED))
    sched.handle(b"small", register("small", capacity=1), 0.0)
    sched.handle(b"big", register("big", capacity=4), 0.0)
    targets = [runs(sched.handle(CLIENT, execute(f"t{i}"), 0.1))[0][0] for i in range(5)]
    # loads: small 0/1, big 0/4 -> either; then big keeps the lower ratio until full.
    assert sorted(targets) == [b"big"] * 4 + [b"small"]
    assert sched.handle(CLIENT, execute("t5"), 0.1) == []  # all 5 slots busy: queued


def test_least_loaded_ties_rotate() -> None:
    """Sequential tasks go round robin over idle nodes (as nginx's least_conn breaks ties);
    under load the load ratio spreads them."""
    sched = Core(SchedulerConfig(strategy=LEAST_LOADED))
    for name in (b"a", b"b", b"c"):
        sched.handle(name, register(name.decode(), capacity=2), 0.0)
    targets = []
    for i in range(4):
        node, task_id = runs(sched.handle(CLIENT, execute(f"s{i}"), 0.1))[0]
        targets.append(node)
        sched.handle(node, ok(task_id), 0.2)
    assert targets == [b"a", b"b", b"c", b"a"]
    spread = [runs(sched.handle(CLIENT, execute(f"t{i}"), 0.3))[0][0] for i in range(6)]
    assert sorted(spread) == [b"a", b"a", b"b", b"b", b"c", b"c"]


def test_round_robin_cycles_through_nodes() -> None:
    sched = Core(SchedulerConfig(strategy=ROUND_ROBIN))
    for name in (b"a", b"b", b"c"):
        sched.handle(name, register(name.decode(), capacity=10), 0.0)
    targets = [runs(sched.handle(CLIENT, execute(f"t{i}"), 0.1))[0][0] for i in range(6)]
    assert targets == [b"a", b"b", b"c", b"a", b"b", b"c"]


def test_task_only_goes_to_a_node_offering_its_function(sched: Core) -> None:
    sched.handle(b"fnode", register("fnode", ("f",), capacity=5), 0.0)
    sched.handle(b"gnode", register("gnode", ("g",), capacity=5), 0.0)
    assert runs(sched.handle(CLIENT, execute("t1", "g"), 0.1)) == [(b"gnode", "t1")]
    assert runs(sched.handle(CLIENT, execute("t2", "f"), 0.1)) == [(b"fnode", "t2")]


def test_resubmitted_task_id_is_answered_not_run_twice(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    assert len(runs(sched.handle(CLIENT, execute("t1"), 0.1))) == 1
    assert sched.handle(OTHER_CLIENT, execute("t1"), 0.2) == []  # resend: no second RUN
    sends = sched.handle(b"n1", ok("t1"), 0.3)
    assert {s.peer for s in sends} == {CLIENT, OTHER_CLIENT}
    assert sched.counter("resubmitted") == 1


def test_silent_node_expires_and_its_task_completes_elsewhere(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n2", register("n2"), 0.0)
    sched.handle(b"n2", p.Heartbeat(), 2.9)
    assert runs(sched.tick(2.9)) == []
    sends = sched.tick(3.1)  # n1 silent for more than interval x liveness
    assert runs(sends) == [(b"n2", "t1")]
    assert not sched.registered(b"n1")
    [done] = sched.handle(b"n2", ok("t1"), 3.2)
    assert done == Send(CLIENT, p.TaskCompleted("t1", 0, b"3", None, 2))


def test_late_result_from_a_dead_node_is_accepted_once(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n2", register("n2"), 3.0)
    assert runs(sched.tick(3.5)) == [(b"n2", "t1")]
    first = sched.handle(b"n1", ok("t1"), 3.6)  # n1 was only slow
    assert Send(CLIENT, p.TaskCompleted("t1", 0, b"3", None, 2)) in first
    assert Send(b"n1", p.Disconnect("not registered: send REGISTER")) in first
    assert sched.handle(b"n2", ok("t1"), 3.7) == []  # second result: nobody answered twice
    assert sched.counter("results_dropped") == 1
    assert sched.node("n2")["active"] == 0


def test_late_result_for_a_requeued_task_takes_it_out_of_the_queue(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.tick(3.5)  # n1 expires; no other node: t1 waits in the queue
    assert sched.queued() == 1
    sends = sched.handle(b"n1", ok("t1"), 3.6)
    assert Send(CLIENT, p.TaskCompleted("t1", 0, b"3", None, 1)) in sends
    assert sched.queued() == 0


def test_heartbeats_go_to_quiet_nodes_only(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n2", register("n2"), 0.0)
    [(busy, _)] = runs(sched.handle(CLIENT, execute("t1"), 0.9))  # a RUN counts as traffic
    beats = [s.peer for s in sched.tick(1.0) if isinstance(s.message, p.Heartbeat)]
    assert beats == [b"n1" if busy == b"n2" else b"n2"]
    # Next due: the busy node's check, an interval after its RUN (the other's comes at 2.0).
    assert sched.next_deadline() == pytest.approx(1.9)


def beats(sends: list[Send]) -> dict[bytes, int | None]:
    """The HEARTBEATs among `sends`: node -> the backlog hint it carries."""
    return {s.peer: s.message.backlog for s in sends if isinstance(s.message, p.Heartbeat)}


def test_registered_carries_the_backlog_the_new_node_leaves(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    for task_id in ("t1", "t2", "t3", "t4"):
        sched.handle(CLIENT, execute(task_id), 0.1)  # t1 runs, three wait
    sends = sched.handle(b"n2", register("n2", capacity=2), 0.2)
    assert sends[0] == Send(b"n2", p.Registered(b"n2".hex(), 1.0, 3, 1))  # first, then RUNs
    assert runs(sends) == [(b"n2", "t2"), (b"n2", "t3")]
    other = sched.handle(b"n3", register("n3", functions=("g",)), 0.2)
    assert other == [Send(b"n3", p.Registered(b"n3".hex(), 1.0, 3, 0))]  # none of it is for g


def test_the_backlog_hint_reaches_busy_nodes_every_interval_while_it_matters(
    sched: Core,
) -> None:
    """A busy node is sent no idle heartbeats, yet its supervisor needs the backlog: the
    broker sends it at every check while it is non-zero, and once more when it changed."""
    sched.handle(b"n1", register("n1", functions=("f", "g")), 0.0)
    sched.handle(b"n2", register("n2", functions=("h",)), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    sched.handle(CLIENT, execute("t2", "g"), 0.1)
    sched.handle(CLIENT, execute("t3"), 0.1)
    assert beats(sched.tick(1.0)) == {b"n1": 2, b"n2": 0}  # n1 had a RUN 0.9 s ago
    sched.handle(b"n1", ok("t1"), 1.5)  # t2 (priority and age) runs: one left
    assert beats(sched.tick(2.0)) == {b"n1": 1, b"n2": 0}
    sched.handle(b"n1", ok("t2"), 2.5)  # t3 runs: none left, which n1 has not been told
    sched.handle(b"n2", p.Heartbeat(), 2.5)  # n2 is alive, and idle
    assert beats(sched.tick(3.0)) == {b"n1": 0, b"n2": 0}
    sched.handle(b"n1", ok("t3"), 3.2)
    sched.handle(CLIENT, execute("t4"), 3.5)  # n1 busy again, backlog still 0: as ever
    sched.handle(b"n2", p.Heartbeat(), 3.5)
    assert beats(sched.tick(4.0)) == {b"n2": 0}
    assert beats(sched.tick(4.5)) == {b"n1": 0}  # an interval after its RUN


def test_the_backlog_hint_counts_the_queued_tasks_of_the_nodes_functions() -> None:
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=10)))
    sched.handle(b"n1", register("n1", functions=("f",)), 0.0)
    sched.handle(b"n2", register("n2", functions=("g",)), 0.0)
    sched.handle(CLIENT, execute("t1", retries=1), 0.1)  # runs on n1
    sched.handle(CLIENT, execute("t2"), 0.1)  # waits for n1
    for task_id in ("t3", "t4", "t5"):
        sched.handle(CLIENT, execute(task_id, "g"), 0.1)  # t3 runs on n2, two wait
    failed = p.Result("t1", 1, b"null", p.ErrorInfo("E", "x"), 1)
    assert runs(sched.handle(b"n1", failed, 0.5)) == [(b"n1", "t2")]
    # t1 waits 10 s for its next attempt: not queued, so not in n1's backlog, which is 0 as
    # n1 was last told: n1 (sent a RUN 0.5 s ago) gets no heartbeat.
    assert beats(sched.tick(1.0)) == {b"n2": 2}


def test_deregister_stops_new_work_but_accepts_running_results(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    assert sched.handle(b"n1", p.Deregister(), 0.2) == []
    # No node takes work now, but one did a moment ago (a node restarting, say): new tasks
    # for its functions wait for the grace period, then are refused at once.
    assert sched.handle(CLIENT, execute("t2"), 0.3) == []
    assert sched.pending("t2")
    later = 0.2 + sched.config.offer_grace_seconds + 0.1
    [refused] = sched.handle(CLIENT, execute("t3"), later)
    assert isinstance(refused.message, p.TaskCompleted)
    assert refused.message.exit_code == p.EXIT_UNKNOWN_FUNCTION
    sends = sched.handle(b"n1", ok("t1"), later)
    assert sends == [Send(CLIENT, p.TaskCompleted("t1", 0, b"3", None, 1))]
    assert not sched.registered(b"n1")


def test_idle_deregister_forgets_the_node_at_once(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n1", p.Deregister(), 0.1)
    assert sched.status(0.2)["nodes"] == []


def test_register_again_requeues_what_the_old_registration_ran(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    sends = sched.handle(b"n1", register("n1"), 0.2)
    assert runs(sends) == [(b"n1", "t1")]
    assert sched.attempt("t1") == 2


def test_unknown_peer_heartbeat_gets_disconnect(sched: Core) -> None:
    assert sched.handle(b"ghost", p.Heartbeat(), 0.0) == [
        Send(b"ghost", p.Disconnect("not registered: send REGISTER"))
    ]


def test_messages_the_broker_does_not_take_are_refused(sched: Core) -> None:
    [send] = sched.handle(CLIENT, p.Run("t", "f", b"[]", 1), 0.0)
    assert isinstance(send.message, p.Error) and send.message.code == p.ERR_UNKNOWN_COMMAND
    assert sched.handle(CLIENT, p.Error("x", "y"), 0.0) == []  # never answer an error


def test_unreachable_node_is_dropped_and_its_tasks_requeued(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    assert sched.gone(b"n1", 0.1) == []
    assert sched.registered(b"n1") and sched.queued() == 0  # its process may be replaced
    sched.tick(1.1)  # no REGISTER said so within an interval: given up
    assert sched.queued() == 1 and not sched.registered(b"n1")


def test_status_reports_nodes_and_queue(sched: Core) -> None:
    sched.handle(b"n1", register("n1", ("f", "g"), capacity=2), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.5)
    body = sched.status(1.5)
    [node] = body["nodes"]
    assert node == {
        "id": b"n1".hex(),
        "name": "n1",
        "host": "h",
        "pid": 1,
        "functions": ["f", "g"],
        "capacity": 2,
        "waiting": 0,
        "prefetch": 0,
        "active": 1,
        "held": 0,
        "busy": 1,
        "completed": 0,
        "failed": 0,
        "last_seen": 1.5,
        "state": "ready",
        "busy_seconds": 1.0,  # running since 0.5
        "utilisation": 0.3333,  # one of two slots for the 1.5 s since it registered
    }
    assert body["queued"] == 0 and body["running"] == 1
    assert body["counters"]["accepted"] == 1


def test_shutdown_tells_every_node(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n2", register("n2"), 0.0)
    sends = sched.event(Stopped(), 1.0)
    assert {s.peer for s in sends} == {b"n1", b"n2"}
    assert all(isinstance(s.message, p.Disconnect) for s in sends)


def test_resend_after_completion_is_answered_from_the_kept_results(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    [done] = sched.handle(b"n1", ok("t1", b"42"), 0.2)
    # The client lost that answer and resends on a fresh socket: same answer, no new RUN.
    assert sched.handle(OTHER_CLIENT, execute("t1"), 0.3) == [Send(OTHER_CLIENT, done.message)]
    assert sched.counter("answered_again") == 1
    assert sched.counter("accepted") == 1


def test_kept_results_expire_after_their_ttl() -> None:
    # A long heartbeat interval keeps the silent test node alive across the TTL.
    config = SchedulerConfig(heartbeat_interval=60, results=ResultsConfig(ttl=10.0))
    sched = Core(config)
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n1", ok("t1"), 1.0)
    sched.tick(10.5)
    assert sched.answered("t1")  # 9.5 s old
    sched.handle(b"n1", p.Heartbeat(), 11.2)
    sched.tick(11.5)
    assert not sched.answered("t1")
    assert runs(sched.handle(CLIENT, execute("t1"), 11.6)) == [(b"n1", "t1")]  # runs again


def test_result_cache_keeps_within_its_entry_and_byte_bounds() -> None:
    cache = ResultCache(ResultsConfig(ttl=60, max_entries=3, max_bytes=10_000))
    for i in range(5):
        cache.add(p.TaskCompleted(f"t{i}", 0, b"1"), float(i))
        cache.check_invariants()
    assert [t for t in ("t0", "t1", "t2", "t3", "t4") if t in cache] == ["t2", "t3", "t4"]
    cache.add(p.TaskCompleted("big", 0, b"x" * 9_400), 5.0)  # pushes older ones out by size
    assert "big" in cache and len(cache) == 1
    assert cache.bytes <= 10_000
    cache.expire(100.0, limit=1000)
    assert len(cache) == 0 and cache.bytes == 0


def test_zero_ttl_keeps_nothing() -> None:
    cache = ResultCache(ResultsConfig(ttl=0))
    cache.add(p.TaskCompleted("t", 0, b"1"), 0.0)
    assert len(cache) == 0


def fail(task_id: str) -> p.Result:
    return p.Result(task_id, p.EXIT_FUNCTION_ERROR, b"null", p.ErrorInfo("ValueError", "boom"))


def backoff_scheduler(retries: int = 2) -> Core:
    retry = RetryPolicy(retries=retries, base=1.0, max_delay=10.0, jitter=0.0)
    return Core(SchedulerConfig(heartbeat_interval=100, retry=retry))


def test_a_failed_attempt_runs_again_after_exponential_backoff() -> None:
    sched = backoff_scheduler(retries=2)
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retry_on=("exception",)), 0.0)
    assert sched.handle(b"n1", fail("t1"), 1.0) == []  # no answer yet: attempt 2 is due
    assert sched.next_deadline() <= 2.0
    assert runs(sched.tick(1.9)) == []
    assert runs(sched.tick(2.0)) == [(b"n1", "t1")]  # 1 s after attempt 1 failed
    sched.handle(b"n1", fail("t1"), 3.0)
    assert runs(sched.tick(4.9)) == []
    assert runs(sched.tick(5.0)) == [(b"n1", "t1")]  # 2 s after attempt 2 failed
    [final] = sched.handle(b"n1", fail("t1"), 6.0)  # attempt 3 of 1 + 2: the last
    assert isinstance(final.message, p.TaskCompleted)
    assert (final.message.exit_code, final.message.attempts) == (1, 3)
    assert final.message.error == p.ErrorInfo("ValueError", "boom")
    assert sched.counter("retried") == 2


def test_a_task_asks_for_its_own_retries_and_bad_arguments_are_not_retried() -> None:
    sched = backoff_scheduler(retries=5)
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", args=b"[]", retries=0), 0.0)
    [done] = sched.handle(b"n1", fail("t1"), 0.1)
    assert done.message.attempts == 1  # type: ignore[union-attr]
    sched.handle(CLIENT, execute("t2"), 0.2)
    bad = p.Result("t2", p.EXIT_BAD_ARGUMENTS, b"null", p.ErrorInfo("BadArguments", "x"))
    [done] = sched.handle(b"n1", bad, 0.3)
    assert done.message.exit_code == p.EXIT_BAD_ARGUMENTS  # type: ignore[union-attr]


def test_a_task_whose_node_dies_on_its_last_attempt_is_answered_node_lost() -> None:
    sched = backoff_scheduler(retries=0)
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    [lost] = sched.lost(b"n1", 0.5)
    assert lost.peer == CLIENT and isinstance(lost.message, p.TaskCompleted)
    assert lost.message.exit_code == p.EXIT_NODE_LOST
    assert lost.message.error is not None and "n1" in lost.message.error.message


def test_a_late_failure_from_a_replaced_attempt_is_ignored() -> None:
    sched = backoff_scheduler(retries=3)
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.lost(b"n1", 0.1)  # given up an interval later, at 100.1: waits 1 s, runs again
    assert sched.handle(b"n1", fail("t1"), 100.2) != []  # n1 is unknown now: DISCONNECT only
    view = sched.scheduler.task_view("t1")
    assert view is not None and view.state is TaskState.WAITING_RETRY
    assert sched.counter("stale_failures") == 1
    # That attempt has answered: a second RESULT for it is refused, not taken as the answer.
    assert sched.handle(b"n1", ok("t1", b"9", attempt=1), 100.3) != []
    assert sched.pending("t1") and sched.counter("refused_not_holder") == 1
    sends = sched.handle(b"n2", register("n2"), 100.5)  # the retry runs when its wait is over
    assert runs(sends) == [] and runs(sched.tick(101.1)) == [(b"n2", "t1")]


def test_a_task_not_started_by_its_queue_timeout_expires(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("busy"), 0.0)
    waiting = execute("t2", args=b"[]", queue_timeout=2.0)
    assert sched.handle(OTHER_CLIENT, waiting, 0.0) == []
    assert sched.next_deadline() <= 2.0
    sched.handle(b"n1", p.Heartbeat(), 1.9)
    assert not [s for s in sched.tick(1.9) if s.peer == OTHER_CLIENT]
    [expired] = [s for s in sched.tick(2.0) if s.peer == OTHER_CLIENT]
    assert isinstance(expired.message, p.TaskCompleted)
    assert (expired.message.exit_code, expired.message.attempts) == (p.EXIT_EXPIRED, 0)
    assert expired.message.error is not None and expired.message.error.type == "Expired"
    assert sched.queued() == 0 and not sched.pending("t2")


def test_a_task_started_in_time_does_not_expire(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("busy"), 0.0)
    sched.handle(OTHER_CLIENT, execute("t2", args=b"[]", queue_timeout=2.0), 0.0)
    assert runs(sched.handle(b"n1", ok("busy"), 1.0)) == [(b"n1", "t2")]
    sched.handle(b"n1", p.Heartbeat(), 2.5)
    assert not [s for s in sched.tick(2.5) if isinstance(s.message, p.TaskCompleted)]
    assert sched.counter("expired") == 0


def test_a_node_lost_between_answer_and_bookkeeping_is_not_touched_again(sched: Core) -> None:
    """An answer's send can find its node gone (PeerGone) before the slot that RESULT freed
    is given back: the lost node is forgotten, not refilled."""
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.1)
    sched.handle(OTHER_CLIENT, execute("t2"), 0.1)  # queued behind t1
    sched.receive(b"n1", ok("t1"), 0.2)
    sends = sched.gone(b"n1", 0.2)  # then Sent: the deferred work
    assert runs(sends) == []  # t2 is not given to the node that is gone
    assert not sched.registered(b"n1")
    assert sched.answered("t1") and sched.pending("t2")
    assert sched.sent(0.3) == []


def test_a_client_past_its_limit_of_pending_tasks_is_refused_until_answers_come() -> None:
    core = Core(SchedulerConfig(max_pending_per_client=2))
    core.handle(b"n1", register("n1"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(CLIENT, execute("t2"), 0.0)  # queued behind t1: two pending
    [refused] = core.handle(CLIENT, execute("t3"), 0.0)
    assert isinstance(refused.message, p.Error)
    assert refused.message.code == p.ERR_TOO_MANY_TASKS and refused.message.task_id == "t3"
    assert not core.pending("t3") and core.counter("refused_too_many_tasks") == 1
    assert runs(core.handle(OTHER_CLIENT, execute("u1"), 0.0)) == []  # others are not limited
    assert core.pending("u1")
    core.handle(b"n1", ok("t1"), 0.1)  # one answered: room for one more
    core.handle(CLIENT, execute("t3"), 0.2)
    assert core.pending("t3")
