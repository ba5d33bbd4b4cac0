"""Attempts that outlive their registration (protocol.md 7.3): a node process that registers
again claims what it still runs or holds the RESULT of, and the broker takes those over
instead of running them again; after a restart from a store, restored tasks wait for the
node processes that were registered; RESULTs are confirmed once stored (STORED, 3.22)."""

from __future__ import annotations

import dataclasses

from broker import protocol as p
from broker.core import journal as j
from broker.core.config import RetryPolicy, SchedulerConfig
from broker.core.events import Committed, HandedOver, Restored, Send
from broker.core.journal import PendingTask
from tests.unit.core import Core, completed, execute, ok, runs

CLIENT = b"client"
# Retries at once, so that a lost attempt's task is queued again (not waiting for a backoff).
CONFIG = SchedulerConfig(
    heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0), journal=True
)


def register(
    name: str, pid: int, claims: tuple[p.Claim, ...] | None = None, capacity: int = 1
) -> p.Register:
    return p.Register(name, "h", pid, ("f",), capacity, None, 0, True, claims)


def restart(before: Core, config: SchedulerConfig = CONFIG) -> Core:
    """A broker started on the store `before`'s journal would have written."""
    pending: dict[str, PendingTask] = {}
    nodes: set[tuple[str, str, int]] = set()
    for change in before.take_journal():
        if isinstance(change, j.SaveTask):
            pending[change.spec.task_id] = PendingTask(change.spec, change.seq, 0.0)
        elif isinstance(change, j.SaveAttempts):
            old = pending[change.task_id]
            pending[change.task_id] = PendingTask(old.spec, old.seq, 0.0, change.attempts)
        elif isinstance(change, j.SaveAnswer):
            pending.pop(change.answer.task_id)
        elif isinstance(change, j.SaveNode):
            nodes.add((change.name, change.host, change.pid))
        elif isinstance(change, j.ForgetNode):
            nodes.discard((change.name, change.host, change.pid))
    after = Core(config)
    seq = max((t.seq for t in pending.values()), default=0) + 1
    after.event(
        Restored(sorted(pending.values(), key=lambda t: t.seq), [], [], seq, sorted(nodes)), 0.0
    )
    return after


def two_nodes_running_t1_t2_with_t3_queued() -> Core:
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1), 0.0)
    core.handle(b"b1", register("b", 2), 0.0)
    for task_id in ("t1", "t2", "t3"):
        core.handle(CLIENT, execute(task_id, retries=2), 0.0)
    return core


def test_a_restarted_broker_adopts_the_attempts_nodes_claim_and_runs_them_once() -> None:
    core = restart(two_nodes_running_t1_t2_with_t3_queued())
    assert core.status()["unclaimed"] == 3 and core.queued() == 0
    sends = core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 1.0)
    assert runs(sends) == []  # a runs t1 already; t3 waits for b, which may run it
    assert core.status()["unclaimed"] == 2
    sends = core.handle(b"b2", register("b", 2, (p.Claim("t2", 1),)), 1.1)
    assert runs(sends) == [] and core.queued() == 1  # every process is back: t3 is queued
    assert core.counter("adopted") == 2
    core.handle(CLIENT, execute("t1", retries=2), 1.2)  # the client's resend
    sends = core.handle(b"a2", ok("t1", attempt=1), 1.5)
    [answer] = completed(sends)
    assert (answer.task_id, answer.attempts) == ("t1", 1)  # run once
    assert runs(sends) == [(b"a2", "t3")] and core.attempt("t3") == 1


def test_tasks_no_node_claims_are_placed_again_when_the_hold_ends() -> None:
    core = restart(two_nodes_running_t1_t2_with_t3_queued())
    core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 1.0)
    core.take_journal()
    sends = core.tick(3.5)  # b never came back within the expiry: its process died
    assert core.counter("restored_unclaimed") == 2
    assert j.ForgetNode("b", "h", 2) in core.take_journal()
    assert runs(sends) == [] and core.queued() == 2  # a is busy with t1
    sends = core.handle(b"a2", ok("t1", attempt=1), 3.5)
    assert runs(sends) == [(b"a2", "t2")]
    assert core.attempt("t2") == 2  # its first attempt went to b, which died: it counts


def test_an_attempt_given_out_just_before_the_restart_is_adopted_too() -> None:
    """The store writes a RUN's attempt a few milliseconds after it: a claim above the
    count the store held is the node's all the same."""
    before = Core(CONFIG)
    before.handle(b"a1", register("a", 1), 0.0)
    before.handle(CLIENT, execute("t1"), 0.0)
    journal = before.take_journal()
    before.journal = [c for c in journal if not isinstance(c, j.SaveAttempts)]  # not written
    core = restart(before)
    assert core.status()["unclaimed"] == 1
    core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 1.0)
    assert core.counter("adopted") == 1 and core.attempt("t1") == 1


def test_a_claim_of_a_finished_task_is_told_to_stop_and_its_result_dropped() -> None:
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1, capacity=2), 0.0)
    for task_id in ("gone", "done"):  # answered already (by another attempt, say)
        core.handle(CLIENT, execute(task_id), 0.0)
        core.handle(b"a1", ok(task_id), 0.0)
    claims = (p.Claim("gone", 1), p.Claim("done", 2, True))
    sends = core.handle(b"a2", register("a", 1, claims, capacity=2), 0.1)
    assert p.Stop(("gone",)) in [s.message for s in sends]  # running: stop it
    assert core.counter("claims_refused") == 2
    assert not core.registered(b"a1")  # the process registered anew: its old link is over
    assert core.handle(b"a2", ok("done"), 0.2) == []  # the held answer: no error
    assert core.handle(b"a2", p.Result("gone", 130, b"null"), 0.3) == []
    assert core.counter("refused_not_holder") == 0 and core.counter("results_dropped") == 2


def test_a_claim_of_an_unknown_task_waits_for_it_then_is_told_to_stop() -> None:
    """A task the old broker placed in the milliseconds it did not store is unknown to the
    restarted one until the client's resend: the claim is kept for the expiry; without a
    resend, the node is told to stop then."""
    core = Core(CONFIG)
    sends = core.handle(b"a1", register("a", 1, (p.Claim("soon", 1), p.Claim("never", 1))), 0.0)
    assert [s.message for s in sends if isinstance(s.message, p.Stop)] == []
    assert core.counter("claims_early") == 2
    core.handle(CLIENT, execute("soon"), 0.5)  # the resend: a1 runs it already
    assert core.counter("adopted") == 1 and core.attempt("soon") == 1
    [answer] = completed(core.handle(b"a1", ok("soon", attempt=1), 0.6))
    assert answer.attempts == 1
    sends = core.tick(3.1)  # no task "never" came within the expiry
    assert p.Stop(("never",)) in [s.message for s in sends]
    assert core.counter("claims_refused") == 1
    assert core.handle(b"a1", p.Result("never", 130, b"null"), 3.2) == []


def test_the_answer_of_a_task_to_come_is_kept_until_its_resend() -> None:
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1, (p.Claim("t1", 1, done=True),)), 0.0)
    assert core.handle(b"a1", ok("t1", result=b"42", attempt=1), 0.1) == []  # kept
    sends = core.handle(CLIENT, execute("t1"), 0.2)
    assert runs(sends) == []
    [answer] = completed(sends)
    assert (answer.result, answer.attempts) == (b"42", 1)
    journal = [type(c) for c in core.take_journal()]
    assert journal.index(j.SaveTask) < journal.index(j.SaveAnswer)  # the row ends answered


def test_a_resend_before_the_claim_waits_for_the_nodes_of_a_restart() -> None:
    """The other order: the client's resend reaches the restarted broker before the node
    that holds the task registers. Accepted during the restart hold, the task waits with
    the restored ones, and the claim adopts it."""
    before = Core(CONFIG)
    before.handle(b"a1", p.Register("a", "h", 1, ("f",), 1, None, 1, True), 0.0)
    before.handle(CLIENT, execute("t1"), 0.0)  # a runs it
    before.handle(CLIENT, execute("t2"), 0.0)  # a holds it: its SaveTask is lost
    before.journal = [  # the last milliseconds, not written: t2's SaveTask and attempt
        c
        for c in before.take_journal()
        if getattr(c, "task_id", None) != "t2"
        and not (isinstance(c, j.SaveTask) and c.spec.task_id == "t2")
    ]
    core = restart(before)
    sends = core.handle(CLIENT, execute("t2"), 0.5)  # the resend: not placed yet
    assert runs(sends) == [] and core.status()["unclaimed"] == 2
    claims = (p.Claim("t1", 1), p.Claim("t2", 1, held=True))
    sends = core.handle(b"a2", p.Register("a", "h", 1, ("f",), 1, None, 1, True, claims), 0.6)
    assert runs(sends) == [] and core.counter("adopted") == 2
    assert core.status()["unclaimed"] == 0 and core.queued() == 0


def test_a_process_that_registers_again_keeps_what_it_runs() -> None:
    """A reconnect of a node process while the broker lives (a network blip): its attempts
    move to the new registration at once, nothing is requeued or run twice."""
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    sends = core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 0.5)
    assert runs(sends) == [] and not core.registered(b"a1")
    assert core.counter("adopted") == 1 and core.counter("requeued") == 0
    [answer] = completed(core.handle(b"a2", ok("t1", attempt=1), 0.6))
    assert answer.attempts == 1


def test_a_node_declared_dead_that_comes_back_keeps_its_attempt() -> None:
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1), 0.0)
    core.handle(CLIENT, execute("t1", retries=1), 0.0)
    core.tick(4.0)  # silent for the expiry: declared dead, t1 queued for attempt 2
    assert not core.registered(b"a1") and core.queued() == 1
    sends = core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 4.1)
    assert runs(sends) == [] and core.queued() == 0 and core.attempt("t1") == 1
    [answer] = completed(core.handle(b"a2", ok("t1", attempt=1), 4.2))
    assert answer.attempts == 1


def test_a_claim_of_a_task_another_node_runs_is_left_to_the_late_result_rules() -> None:
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1), 0.0)
    core.handle(CLIENT, execute("t1", retries=1), 0.0)
    core.tick(4.0)  # a declared dead
    core.handle(b"b1", register("b", 2), 4.0)  # runs attempt 2
    assert core.attempt("t1") == 2
    core.handle(b"a2", register("a", 1, (p.Claim("t1", 1),)), 4.1)
    assert core.counter("claims_ignored") == 1
    [answer] = completed(core.handle(b"a2", ok("t1", attempt=1), 4.2))  # first success wins
    assert answer.task_id == "t1"


def test_results_are_confirmed_once_stored() -> None:
    core = Core(CONFIG)
    sends = core.handle(b"a1", register("a", 1, ()), 0.0)
    [registered] = [s.message for s in sends if isinstance(s.message, p.Registered)]
    assert registered.stored
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"a1", ok("t1"), 0.1)
    core.handle(b"a1", p.Result("unknown", 0, b"1"), 0.2)  # refused, but handled all the same
    assert core.scheduler.confirming
    assert core.event(Committed(), 0.3) == [Send(b"a1", p.Stored(2))]
    assert core.event(Committed(), 0.4) == []  # nothing new


def test_no_confirmation_without_a_store_or_for_a_node_that_does_not_claim() -> None:
    bare = Core(SchedulerConfig())
    [registered] = [
        s.message
        for s in bare.handle(b"a1", register("a", 1, ()), 0.0)
        if isinstance(s.message, p.Registered)
    ]
    assert not registered.stored
    core = Core(CONFIG)
    old_node = p.Register("o", "h", 3, ("f",), 1)
    [registered] = [
        s.message for s in core.handle(b"o", old_node, 0.0) if isinstance(s.message, p.Registered)
    ]
    assert not registered.stored
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"o", ok("t1"), 0.1)
    assert not core.scheduler.confirming


def test_held_claims_are_adopted_as_held_or_told_to_stop() -> None:
    """Tasks a node held unstarted when it lost its link are claimed too: kept where no one
    else has them, else dropped (STOP), never run a second time."""
    core = Core(CONFIG)
    core.handle(b"a1", p.Register("a", "h", 1, ("f",), 1, None, 4, True), 0.0)
    core.handle(b"b1", register("b", 2), 0.0)
    for task_id in ("t1", "t2", "t3", "t4"):
        core.handle(CLIENT, execute(task_id), 0.0)
    core.tick(4.0)  # both silent: declared dead; t1..t4 queued again
    claims = (p.Claim("t1", 1), p.Claim("t2", 1, held=True), p.Claim("t9", 1, held=True))
    sends = core.handle(b"a2", p.Register("a", "h", 1, ("f",), 1, None, 4, True, claims), 4.1)
    assert core.attempt("t1") == 1 and core.attempt("t2") == 1  # t2 held again, unstarted
    assert core.status()["held"] == 1 and core.status()["running"] == 1
    [registered] = [s.message for s in sends if isinstance(s.message, p.Registered)]
    assert registered.adopts
    # t9 is unknown: its task may yet come (a resend), for the expiry; then it is dropped.
    assert core.counter("claims_early") == 1
    core.handle(b"a2", p.Heartbeat(), 7.0)
    assert p.Stop(("t9",)) in [s.message for s in core.tick(7.2)]


def timed_out(task_id: str, attempt: int = 1) -> p.Result:
    error = p.ErrorInfo("Timeout", "f() exceeded its timeout of 0.3 s (attempt 1)")
    return p.Result(task_id, p.EXIT_TIMEOUT, b"null", error, attempt)


def successor(claims: tuple[p.Claim, ...]) -> p.Register:
    """Process 2 of node "a", started in place of process 1, which handed it `claims`."""
    gone = p.Replaces(1, "stopped after task t1 exceeded its 0.3 s timeout")
    return p.Register("a", "h", 2, ("f",), 1, gone, 0, True, claims)


def test_a_successor_claims_the_answer_its_predecessor_handed_over() -> None:
    """A process that ended for a timeout hands its answer to its successor (protocol.md
    7.4), which claims and sends it: the task is answered 124 at once, not 70 after a wait,
    and the predecessor's own copy, should it still come, is dropped without an error."""
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1), 0.0)
    core.handle(CLIENT, execute("t1", task_timeout=0.3, retries=2), 0.0)
    sends = core.handle(b"a2", successor((p.Claim("t1", 1, done=True),)), 0.35)
    assert runs(sends) == [] and core.counter("adopted") == 1
    [answer] = completed(core.handle(b"a2", timed_out("t1"), 0.36))
    assert (answer.exit_code, answer.attempts) == (p.EXIT_TIMEOUT, 1)  # not retried: a timeout
    assert core.handle(b"a1", timed_out("t1"), 0.37) == []  # the predecessor's copy
    assert completed(core.tick(5.0)) == [] and core.counter("refused_not_holder") == 0


def test_a_timeout_answered_while_the_broker_was_down_is_not_run_again() -> None:
    """The process stopped a task at its timeout and ended while the broker was down: the
    answer it sent was lost with that broker. Its successor claims it from the handover,
    and the restarted broker answers 124 instead of placing the task again."""
    before = Core(CONFIG)
    before.handle(b"a1", register("a", 1), 0.0)
    before.handle(CLIENT, execute("t1", task_timeout=0.3), 0.0)
    core = restart(before)
    sends = core.handle(b"a2", successor((p.Claim("t1", 1, done=True),)), 1.0)
    assert runs(sends) == [] and core.counter("restored_unclaimed") == 0  # process 1 is back
    core.handle(CLIENT, execute("t1", task_timeout=0.3), 1.05)  # the client's resend
    [answer] = completed(core.handle(b"a2", timed_out("t1"), 1.1))
    assert (answer.exit_code, answer.attempts) == (p.EXIT_TIMEOUT, 1)


def test_a_task_of_no_nodes_function_accepted_during_the_hold_is_refused_after_the_grace() -> None:
    """Accepted thanks to the restart's grace, it waits with the restored tasks; a grace
    shorter than the hold ends while it waits, and it is refused all the same."""
    short = dataclasses.replace(CONFIG, offer_grace=1.0)
    core = restart(two_nodes_running_t1_t2_with_t3_queued(), short)
    sends = core.handle(CLIENT, execute("x", function="g"), 0.1)
    assert completed(sends) == [] and core.status()["unclaimed"] == 4
    [answer] = completed(core.tick(1.5))
    assert (answer.task_id, answer.exit_code) == ("x", p.EXIT_UNKNOWN_FUNCTION)


def test_a_status_that_asks_for_the_store_is_answered_once_its_handover_is_written() -> None:
    """STATUS `stored` (protocol.md 3.10): with a journal, the reply waits for the store to
    write the handover after it, in order with the nodes' STORED; without one, it leaves at
    once."""
    core = Core(CONFIG)
    core.handle(b"a1", register("a", 1, ()), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    assert core.handle(CLIENT, p.Status(stored=True), 0.1) == []
    assert core.scheduler.awaiting_store
    core.event(HandedOver(), 0.2)  # the store has the EXECUTE's changes now
    assert not core.scheduler.awaiting_store
    assert core.handle(b"other", p.Status(stored=True), 0.3) == []  # after that handover
    [reply] = core.event(Committed(), 0.4)
    assert reply.peer == CLIENT and isinstance(reply.message, p.StatusReply)
    [later] = core.event(Committed(), 0.5)  # with no handover left: all so far
    assert later.peer == b"other"
    plain = Core(dataclasses.replace(CONFIG, journal=False))
    [at_once] = plain.handle(CLIENT, p.Status(stored=True), 0.0)
    assert isinstance(at_once.message, p.StatusReply)
