"""Scenario tests of the scheduler's reliability parts: execution timeouts, replaced node
processes, who may answer a task, graces, the dead-letter queue, the journal for the store,
restore and stopping."""

from __future__ import annotations

import pytest

from broker import protocol as p
from broker.core import journal as j
from broker.core.config import ResultsConfig, RetryPolicy, SchedulerConfig
from broker.core.events import Received, Restored, Send, StopRequested
from broker.core.journal import PendingTask
from broker.core.scheduler import TICK_BUDGET
from tests.unit.core import Core, completed

CLIENT = b"client-1"


def register(name: str, pid: int = 1, replaces: p.Replaces | None = None) -> p.Register:
    return p.Register(name, "h", pid, ("f",), 1, replaces)


def execute(
    task_id: str,
    retries: int = 0,
    task_timeout: float | None = None,
    retry_on: tuple[str, ...] | None = None,
) -> p.Execute:
    return p.Execute(p.TaskSpec(task_id, "f", b"[1]", 5, retries, None, task_timeout, retry_on))


def failed(task_id: str) -> p.Result:
    return p.Result(task_id, 1, b"null", p.ErrorInfo("ValueError", "bad"))


@pytest.fixture
def sched() -> Core:
    config = SchedulerConfig(
        heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0), journal=True
    )
    return Core(config)


# ------------------------------------------------------------------------ execution timeout


def test_run_carries_the_task_timeout_or_the_broker_default() -> None:
    sched = Core(SchedulerConfig(task_timeout=30.0))
    sched.handle(b"n1", register("n1"), 0.0)
    [run] = sched.handle(CLIENT, execute("t1", task_timeout=1.5), 0.0)
    assert run.message == p.Run("t1", "f", b"[1]", 1, 1.5)
    sched.handle(b"n1", p.Result("t1", 0, b"1"), 0.1)
    [run] = sched.handle(CLIENT, execute("t2"), 0.2)
    assert run.message == p.Run("t2", "f", b"[1]", 1, 30.0)


def test_node_that_does_not_stop_an_overdue_task_is_disconnected(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", task_timeout=1.0), 0.0)
    grace = sched.config.overdue_grace
    assert sched.next_deadline() <= 1.0 + grace
    for second in range(1, int(grace) + 2):  # it heartbeats: alive, but silent on the task
        sched.handle(b"n1", p.Heartbeat(), second - 0.05)
        if second < 1.0 + grace:
            assert completed(sched.tick(second)) == []
    sends = sched.tick(1.0 + grace)
    assert Send(b"n1", p.Disconnect("did not stop a task past its timeout")) in sends
    [answer] = completed(sends)
    assert answer.exit_code == p.EXIT_TIMEOUT and answer.error is not None
    assert answer.error.type == "Timeout" and "1 s" in answer.error.message
    assert not sched.registered(b"n1")


def test_node_answering_124_in_time_keeps_its_registration(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", task_timeout=1.0), 0.0)
    result = p.Result("t1", p.EXIT_TIMEOUT, b"null", p.ErrorInfo("Timeout", "exceeded 1 s"))
    [answer] = completed(sched.handle(b"n1", result, 1.01))
    assert answer.exit_code == p.EXIT_TIMEOUT
    assert completed(sched.tick(10.0)) == [] and not sched.registered(b"n1")  # expired by silence


# ------------------------------------------------------------------------ replaced processes


def test_replacement_process_fails_the_dead_process_tasks_as_crashed(sched: Core) -> None:
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1", retries=1), 0.0)
    sends = sched.handle(b"new", register("n.0", 101, p.Replaces(100, "killed by SIGSEGV")), 0.5)
    assert completed(sends) == [] and sched.registered(b"old")  # its last RESULTs may come
    sends = sched.tick(1.5)  # a heartbeat interval without them: it crashed with t1
    assert not sched.registered(b"old")
    # one retry left: it runs again at once on the new process
    assert Send(b"new", p.Run("t1", "f", b"[1]", 2)) in sends
    [answer] = completed(sched.handle(b"new", failed("t1"), 1.6))
    assert answer.attempts == 2 and answer.exit_code == 1


def test_crash_on_the_last_attempt_is_answered_worker_crashed(sched: Core) -> None:
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1", retries=0), 0.0)
    sched.handle(b"new", register("n.0", 101, p.Replaces(100, "exited with status 3")), 1)
    [answer] = completed(sched.tick(2.0))
    assert answer.exit_code == p.EXIT_WORKER_CRASHED and answer.error is not None
    assert answer.error.type == "WorkerCrashed" and "exited with status 3" in answer.error.message
    assert sched.scheduler.dead_letter_ids() == ["t1"]


def timed_out(task_id: str, attempt: int = 1) -> p.Result:
    error = p.ErrorInfo("Timeout", "f() exceeded its timeout of 0.3 s (attempt 1)")
    return p.Result(task_id, p.EXIT_TIMEOUT, b"null", error, attempt)


@pytest.mark.parametrize("register_first", [True, False], ids=["register-first", "result-first"])
def test_a_timeout_is_reported_as_a_timeout_however_the_replacement_races_it(
    sched: Core, register_first: bool
) -> None:
    """The process that stopped a function at its timeout answers 124 and ends; its
    successor's REGISTER `replaces` may come before or after that RESULT (two connections,
    no order between them): either way the task is answered 124 Timeout, never 70."""
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1", task_timeout=0.3), 0.0)
    replacement = register(
        "n.0", 101, p.Replaces(100, "stopped after task t1 exceeded its 0.3 s timeout")
    )
    if register_first:
        assert completed(sched.handle(b"new", replacement, 0.31)) == []
        [answer] = completed(sched.handle(b"old", timed_out("t1"), 0.32))
    else:
        [answer] = completed(sched.handle(b"old", timed_out("t1"), 0.31))
        sched.handle(b"new", replacement, 0.32)
    assert (answer.exit_code, answer.error and answer.error.type) == (p.EXIT_TIMEOUT, "Timeout")
    assert completed(sched.tick(2.0)) == []  # nothing answered twice
    assert not sched.registered(b"old") and sched.registered(b"new")
    assert sched.counter("nodes_crashed") <= 1


def test_a_replaced_process_gets_no_new_work_while_its_last_results_may_come(sched: Core) -> None:
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"new", register("n.0", 101, p.Replaces(100, "killed by SIGKILL")), 0.1)
    sends = sched.handle(CLIENT, execute("t2"), 0.2)
    assert [s.peer for s in sends if isinstance(s.message, p.Run)] == [b"new"]


def test_replaces_only_the_named_pid_of_the_same_node(sched: Core) -> None:
    sched.handle(b"a", register("n.0", pid=100), 0.0)
    sched.handle(b"b", register("n.1", pid=100), 0.0)  # same pid, another name
    sched.handle(b"new", register("n.0", 102, p.Replaces(999, "gone")), 0.1)
    assert sched.registered(b"a") and sched.registered(b"b")


# ------------------------------------------------------------------------ dead letters


def test_final_failure_goes_to_the_dead_letter_queue_and_can_be_replayed(
    sched: Core,
) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    [listing] = sched.handle(CLIENT, p.Dlq("list"), 0.2)
    assert isinstance(listing.message, p.DlqReply)
    assert listing.message.body["total"] == 1
    [entry] = listing.message.body["dead_letters"]
    assert (entry["task_id"], entry["exit_code"], entry["attempts"]) == ("t1", 1, 1)
    [show] = sched.handle(CLIENT, p.Dlq("show", "t1"), 0.2)
    assert isinstance(show.message, p.DlqReply) and show.message.args == b"[1]"
    sends = sched.handle(CLIENT, p.Dlq("replay", "t1"), 0.3)
    assert sends[0].message == p.DlqReply({"replayed": ["t1"], "missing": []})
    assert sends[1] == Send(b"n1", p.Run("t1", "f", b"[1]", 1))  # a fresh count of attempts
    assert sched.scheduler.dead_letter_ids() == [] and not sched.answered("t1")
    sched.handle(b"n1", p.Result("t1", 0, b"7"), 0.4)
    # the new answer is the one a resend of the id gets
    [again] = sched.handle(b"c2", execute("t1"), 0.5)
    assert again.message == p.TaskCompleted("t1", 0, b"7", None, 1)


def test_unknown_function_refusals_are_not_dead_letters(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, p.Execute(p.TaskSpec("t1", "nosuch", b"[]")), 0.0)
    assert sched.scheduler.dead_letter_ids() == []


def test_dead_letter_show_of_unknown_id_and_purge(sched: Core) -> None:
    [reply] = sched.handle(CLIENT, p.Dlq("show", "nope"), 0.0)
    assert isinstance(reply.message, p.Error) and reply.message.code == p.ERR_NOT_FOUND
    sched.handle(b"n1", register("n1"), 0.0)
    for task_id in ("a", "b"):
        sched.handle(CLIENT, execute(task_id), 0.0)
        sched.handle(b"n1", failed(task_id), 0.1)
    [one] = sched.handle(CLIENT, p.Dlq("purge", "a"), 0.2)
    assert one.message == p.DlqReply({"purged": 1})
    [rest] = sched.handle(CLIENT, p.Dlq("purge"), 0.2)
    assert rest.message == p.DlqReply({"purged": 1})
    assert sched.scheduler.dead_letter_ids() == []


def test_replay_all_reports_ids_pending_again_as_missing() -> None:
    # Answers are kept for 1 s only, so the id can be submitted again once it expired.
    sched = Core(SchedulerConfig(heartbeat_interval=100, results=ResultsConfig(ttl=1.0)))
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("a"), 0.0)
    sched.handle(b"n1", failed("a"), 0.1)
    sched.tick(2.0)  # its answer expired ...
    sched.handle(CLIENT, execute("a"), 2.1)  # ... and someone submitted the id again
    [reply, *_] = sched.handle(CLIENT, p.Dlq("replay"), 2.2)
    assert reply.message == p.DlqReply({"replayed": [], "missing": ["a"]})


# ------------------------------------------------------------------------ journal and restore


def test_journal_records_accept_retry_finish_and_dead_letter(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retries=1, retry_on=("exception",)), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    sched.handle(b"n1", failed("t1"), 0.2)
    kinds = [type(change) for change in sched.take_journal()]
    # The node process, the task, each attempt as its RUN goes out, the end.
    assert kinds == [
        j.SaveNode,
        j.SaveTask,
        j.SaveAttempts,
        j.SaveAttempts,
        j.SaveAnswer,
        j.SaveDeadLetter,
    ]
    assert sched.take_journal() == []


def test_replay_journals_the_forgetting_and_the_new_task(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    sched.take_journal()
    sched.handle(CLIENT, p.Dlq("replay", "t1"), 0.2)
    changes = sched.take_journal()
    kinds = [type(c) for c in changes]
    assert kinds == [j.ForgetDeadLetter, j.ForgetAnswer, j.SaveTask, j.SaveAttempts]
    saved = changes[2]
    assert isinstance(saved, j.SaveTask) and saved.spec == execute("t1").spec


def test_no_journal_without_a_store() -> None:
    sched = Core(SchedulerConfig())
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    assert sched.journal == []


def test_restore_queues_kept_tasks_and_answers_kept_results(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retries=2, task_timeout=5.0, retry_on=("exception",)), 0.0)
    sched.handle(CLIENT, execute("t2"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)  # attempt 1 of t1 failed; attempt 2 starts
    journal = sched.take_journal()
    saved = [c for c in journal if isinstance(c, j.SaveTask)]
    attempts = {c.task_id: c.attempts for c in journal if isinstance(c, j.SaveAttempts)}
    pending = [
        PendingTask(c.spec, c.seq, c.submitted_at, attempts.get(c.spec.task_id, 0)) for c in saved
    ]
    done = p.TaskCompleted("old", 0, b"1", None, 1)
    fresh = Core(sched.config)
    fresh.event(Restored(pending, [(done, 0.0)], [], 10), 0.0)
    assert sorted(fresh.scheduler.pending()) == ["t1", "t2"] and fresh.queued() == 2
    assert fresh.attempt("t1") == 2  # given out: it may have run
    [reply] = fresh.handle(b"c2", execute("old"), 0.1)
    assert reply.message == done
    sends = fresh.handle(b"n2", register("n2"), 0.2)
    [run] = [s.message for s in sends if isinstance(s.message, p.Run)]
    assert (run.task_id, run.attempt, run.task_timeout) == ("t1", 3, 5.0)  # first in line
    fresh.handle(CLIENT, execute("t3"), 0.3)
    [saved_t3] = [c for c in fresh.take_journal() if isinstance(c, j.SaveTask)]
    assert saved_t3.seq > 10  # numbering goes on above what the store held


# ------------------------------------------------------------------------ stopping


def test_stopping_broker_starts_nothing_new_and_ignores_new_tasks(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(CLIENT, execute("t2"), 0.0)  # queued
    sched.event(StopRequested(), 0.05)
    assert sched.handle(CLIENT, execute("t3"), 0.1) == []
    sends = sched.handle(b"n1", p.Result("t1", 0, b"1"), 0.2)
    assert [type(s.message) for s in sends] == [p.TaskCompleted]  # t2 is not started
    assert sched.scheduler.running() == 0 and sched.scheduler.pending() == ["t2"]


# ------------------------------------------------------------------------ graces


def test_restarted_broker_holds_tasks_until_their_nodes_are_back() -> None:
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    done = p.TaskCompleted("old", 0, b"1", None, 1)
    sched.event(Restored([], [(done, 0.0)], [], 1), 0.0)  # a restart from a store
    assert sched.handle(CLIENT, execute("early"), 0.1) == []  # no node yet: it waits
    typo = p.Execute(p.TaskSpec("typo", "nosuch", b"[]"))
    assert sched.handle(CLIENT, typo, 0.1) == []
    sends = sched.handle(b"n1", register("n1"), 0.5)  # offers "f"
    assert Send(b"n1", p.Run("early", "f", b"[1]", 1)) in sends
    sched.handle(b"n1", p.Result("early", 0, b"1"), 0.6)
    grace = sched.config.offer_grace_seconds
    assert sched.next_deadline() <= grace
    sched.handle(b"n1", p.Heartbeat(), grace)
    [refused] = completed(sched.tick(grace + 0.1))
    assert refused.task_id == "typo" and refused.exit_code == p.EXIT_UNKNOWN_FUNCTION
    assert refused.attempts == 0 and sched.scheduler.dead_letter_ids() == []
    later = p.Execute(p.TaskSpec("later", "nosuch", b"[]"))
    [late] = sched.handle(CLIENT, later, grace + 0.2)
    assert isinstance(late.message, p.TaskCompleted)
    assert late.message.exit_code == p.EXIT_UNKNOWN_FUNCTION  # refused at once again


def test_fresh_broker_refuses_unknown_functions_at_once() -> None:
    sched = Core(SchedulerConfig())
    sched.event(Restored([], [], [], 0), 0.0)  # an empty store: nothing to wait for
    [refused] = sched.handle(CLIENT, execute("t1"), 0.1)
    assert isinstance(refused.message, p.TaskCompleted)
    assert refused.message.exit_code == p.EXIT_UNKNOWN_FUNCTION


def test_tasks_accepted_in_the_grace_after_a_node_left_are_refused_when_it_ends() -> None:
    """A task accepted only because its function's last node left a moment ago waits for
    a node; if none comes within the grace, it gets the 127 it would have got at once.
    A task accepted while a node offered its function is never dropped."""
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("running"), 0.0)
    sched.handle(CLIENT, execute("queued"), 0.0)  # accepted while n1 offers f
    sched.handle(b"n1", p.Deregister(), 0.1)
    assert sched.handle(CLIENT, execute("in-grace"), 0.2) == []  # waits for a node
    sched.handle(b"n1", p.Result("running", 0, b"1"), 0.3)
    grace = sched.config.offer_grace_seconds
    [refused] = completed(sched.tick(0.1 + grace))
    assert refused.task_id == "in-grace" and refused.exit_code == p.EXIT_UNKNOWN_FUNCTION
    assert refused.error is not None and "after its last node left" in refused.error.message
    assert sched.scheduler.pending() == ["queued"]  # still waiting for a node
    sends = sched.handle(b"n2", register("n2"), grace + 1)
    assert [s.message.task_id for s in sends if isinstance(s.message, p.Run)] == ["queued"]


def test_a_node_back_within_the_grace_runs_the_tasks_that_waited() -> None:
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n1", p.Deregister(), 0.1)
    assert sched.handle(CLIENT, execute("t1"), 0.2) == []
    sends = sched.handle(b"n2", register("n2"), 1.0)
    assert Send(b"n2", p.Run("t1", "f", b"[1]", 1)) in sends
    sched.handle(b"n2", p.Result("t1", 0, b"1"), 1.1)
    sched.handle(CLIENT, execute("t2"), 1.2)  # accepted: n2 offers f
    sched.handle(b"n2", p.Heartbeat(), 59.9)
    assert completed(sched.tick(60.0)) == []  # the grace ends with nothing to refuse
    assert sched.counter("unknown_function") == 0


# ------------------------------------------------------------------------ bursts


def test_a_burst_of_queue_deadlines_is_spread_over_ticks() -> None:
    """50,000 queued tasks reaching their queue deadline together are answered TICK_BUDGET
    per tick, so the shell handles the messages waiting (a STATUS) between two ticks."""
    sched = Core(SchedulerConfig(heartbeat_interval=1000.0)).scheduler  # no per-step checks
    sched.handle(Received(b"n1", register("n1")), 0.0)
    sched.handle(Received(CLIENT, execute("busy")), 0.0)
    for i in range(50_000):
        spec = p.TaskSpec(f"t{i}", "f", b"[]", queue_timeout=1.0)
        sched.handle(Received(CLIENT, p.Execute(spec)), 0.5)
    assert sched.status(0.5)["queued"] == 50_000
    sizes = []
    while sched.next_deadline() <= 1.5:
        sizes.append(sum(1 for c in sched.tick(1.5) if type(c) is Send))
        if len(sizes) % 20 == 0:
            sched.check_invariants()
    assert sum(sizes) == 50_000 and max(sizes) <= TICK_BUDGET
    assert len(sizes) == -(-50_000 // TICK_BUDGET)
    assert sched.status(1.5)["queued"] == 0 and sched.counters["expired"] == 50_000
    sched.check_invariants()


def test_purges_are_journaled_so_purged_dead_letters_stay_gone(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    for task_id in ("a", "b"):
        sched.handle(CLIENT, execute(task_id), 0.0)
        sched.handle(b"n1", failed(task_id), 0.1)
    sched.take_journal()
    sched.handle(CLIENT, p.Dlq("purge", "a"), 0.2)
    sched.handle(CLIENT, p.Dlq("purge"), 0.3)
    sched.handle(CLIENT, p.Dlq("purge"), 0.4)  # nothing left: nothing to journal
    assert sched.take_journal() == [j.ForgetDeadLetter("a"), j.ForgetDeadLetter(None)]


def test_a_starting_broker_waits_one_expiry_for_nodes_before_calling_a_function_unknown() -> None:
    """Without a store a restart looks like a first start: a client's resend that comes
    before the nodes are back waits for them instead of getting 127."""
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, start_grace=True))
    assert sched.handle(CLIENT, execute("early"), 0.1) == []  # waits
    sends = sched.handle(b"n1", register("n1"), 0.5)
    assert Send(b"n1", p.Run("early", "f", b"[1]", 1)) in sends
    sched.tick(3.0)
    typo = p.Execute(p.TaskSpec("x", "nosuch", b"[]"))
    [refused] = completed(sched.handle(CLIENT, typo, 3.1))
    assert refused.exit_code == p.EXIT_UNKNOWN_FUNCTION  # after the expiry: at once


def test_an_unreachable_node_replaced_within_an_interval_fails_its_task_as_crashed() -> None:
    """A send to a node fails because its process just died; its supervisor's next process
    registers with `replaces` a moment later: the task failed as WorkerCrashed, with the
    reason, not as NodeLost (protocol.md 7.4)."""
    sched = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    sched.handle(b"a1", register("a", 1), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    assert sched.gone(b"a1", 0.2) == []  # waits for a REGISTER that says why
    died = register("a", 2, p.Replaces(1, "exited with status 3"))
    sched.handle(b"a2", died, 0.5)
    [answer] = completed(sched.tick(1.5))
    assert answer.exit_code == p.EXIT_WORKER_CRASHED
    assert answer.error is not None and "status 3" in answer.error.message
