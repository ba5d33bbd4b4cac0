"""Scenario tests of the scheduler's reliability parts: execution timeouts, replaced node
processes, the dead-letter queue, the journal for the store, restore and stopping."""

from __future__ import annotations

import random

import pytest

from broker import journal as j, protocol as p
from broker.retries import RetryPolicy
from broker.scheduler import Scheduler, SchedulerConfig, Send

CLIENT = b"client-1"


def register(name: str, pid: int = 1, replaces: p.Replaces | None = None) -> p.Register:
    return p.Register(name, "h", pid, ("f",), 1, replaces)


def execute(task_id: str, retries: int = 0, timeout: float | None = None) -> p.Execute:
    return p.Execute(task_id, "f", b"[1]", 5, retries, None, timeout)


def failed(task_id: str) -> p.Result:
    return p.Result(task_id, 1, b"null", p.ErrorInfo("ValueError", "bad"))


def completed(sends: list[Send]) -> list[p.TaskCompleted]:
    return [s.message for s in sends if isinstance(s.message, p.TaskCompleted)]


@pytest.fixture
def sched() -> Scheduler:
    config = SchedulerConfig(
        heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0), journal=True
    )
    return Scheduler(config, random.Random(1))


# ------------------------------------------------------------------------ execution timeout


def test_run_carries_the_task_timeout_or_the_broker_default() -> None:
    sched = Scheduler(SchedulerConfig(task_timeout=30.0))
    sched.handle(b"n1", register("n1"), 0.0)
    [run] = sched.handle(CLIENT, execute("t1", timeout=1.5), 0.0)
    assert run.message == p.Run("t1", "f", b"[1]", 1, 1.5)
    sched.handle(b"n1", p.Result("t1", 0, b"1"), 0.1)
    [run] = sched.handle(CLIENT, execute("t2"), 0.2)
    assert run.message == p.Run("t2", "f", b"[1]", 1, 30.0)


def test_node_that_does_not_stop_an_overdue_task_is_disconnected(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", timeout=1.0), 0.0)
    grace = sched.config.timeout_grace
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
    assert b"n1" not in sched.pool
    sched.check_invariants()


def test_node_answering_124_in_time_keeps_its_registration(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", timeout=1.0), 0.0)
    result = p.Result("t1", p.EXIT_TIMEOUT, b"null", p.ErrorInfo("Timeout", "exceeded 1 s"))
    [answer] = completed(sched.handle(b"n1", result, 1.01))
    assert answer.exit_code == p.EXIT_TIMEOUT
    assert completed(sched.tick(10.0)) == [] and b"n1" not in sched.pool  # expired by silence
    sched.check_invariants()


# ------------------------------------------------------------------------ replaced processes


def test_replacement_process_fails_the_dead_process_tasks_as_crashed(sched: Scheduler) -> None:
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1", retries=1), 0.0)
    sends = sched.handle(b"new", register("n.0", 101, p.Replaces(100, "killed by SIGSEGV")), 0.5)
    assert b"old" not in sched.pool
    # one retry left: it runs again at once on the new process
    assert Send(b"new", p.Run("t1", "f", b"[1]", 2)) in sends
    [answer] = completed(sched.handle(b"new", failed("t1"), 0.6))
    assert answer.attempts == 2 and answer.exit_code == 1
    sched.check_invariants()


def test_crash_on_the_last_attempt_is_answered_worker_crashed(sched: Scheduler) -> None:
    sched.handle(b"old", register("n.0", pid=100), 0.0)
    sched.handle(CLIENT, execute("t1", retries=0), 0.0)
    sends = sched.handle(b"new", register("n.0", 101, p.Replaces(100, "exited with status 3")), 1)
    [answer] = completed(sends)
    assert answer.exit_code == p.EXIT_WORKER_CRASHED and answer.error is not None
    assert answer.error.type == "WorkerCrashed" and "exited with status 3" in answer.error.message
    assert "t1" in sched.dead


def test_replaces_only_the_named_pid_of_the_same_node(sched: Scheduler) -> None:
    sched.handle(b"a", register("n.0", pid=100), 0.0)
    sched.handle(b"b", register("n.1", pid=100), 0.0)  # same pid, another name
    sched.handle(b"new", register("n.0", 102, p.Replaces(999, "gone")), 0.1)
    assert b"a" in sched.pool and b"b" in sched.pool


# ------------------------------------------------------------------------ dead letters


def test_final_failure_goes_to_the_dead_letter_queue_and_can_be_replayed(
    sched: Scheduler,
) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    [listing] = sched.handle(CLIENT, p.DeadLetters("list"), 0.2)
    assert isinstance(listing.message, p.DeadLettersReply)
    assert listing.message.body["total"] == 1
    [entry] = listing.message.body["dead_letters"]
    assert (entry["task_id"], entry["exit_code"], entry["attempts"]) == ("t1", 1, 1)
    [show] = sched.handle(CLIENT, p.DeadLetters("show", "t1"), 0.2)
    assert isinstance(show.message, p.DeadLettersReply) and show.message.payload == b"[1]"
    sends = sched.handle(CLIENT, p.DeadLetters("replay", "t1"), 0.3)
    assert sends[0].message == p.DeadLettersReply({"replayed": ["t1"], "missing": []})
    assert sends[1] == Send(b"n1", p.Run("t1", "f", b"[1]", 1))  # a fresh count of attempts
    assert "t1" not in sched.dead and "t1" not in sched.results
    sched.handle(b"n1", p.Result("t1", 0, b"7"), 0.4)
    # the new answer is the one a resend of the id gets
    [again] = sched.handle(b"c2", execute("t1"), 0.5)
    assert again.message == p.TaskCompleted("t1", 0, b"7", None, 1)
    sched.check_invariants()


def test_unknown_function_refusals_are_not_dead_letters(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, p.Execute("t1", "nosuch", b"[]"), 0.0)
    assert len(sched.dead) == 0


def test_dead_letter_show_of_unknown_id_and_purge(sched: Scheduler) -> None:
    [reply] = sched.handle(CLIENT, p.DeadLetters("show", "nope"), 0.0)
    assert isinstance(reply.message, p.Error) and reply.message.code == p.ERR_NOT_FOUND
    sched.handle(b"n1", register("n1"), 0.0)
    for task_id in ("a", "b"):
        sched.handle(CLIENT, execute(task_id), 0.0)
        sched.handle(b"n1", failed(task_id), 0.1)
    [one] = sched.handle(CLIENT, p.DeadLetters("purge", "a"), 0.2)
    assert one.message == p.DeadLettersReply({"purged": 1})
    [rest] = sched.handle(CLIENT, p.DeadLetters("purge"), 0.2)
    assert rest.message == p.DeadLettersReply({"purged": 1}) and len(sched.dead) == 0


def test_replay_all_reports_ids_pending_again_as_missing(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("a"), 0.0)
    sched.handle(b"n1", failed("a"), 0.1)
    sched.results.forget("a")  # its answer expired ...
    sched.handle(CLIENT, execute("a"), 0.2)  # ... and someone submitted the id again
    [reply, *_] = sched.handle(CLIENT, p.DeadLetters("replay"), 0.3)
    assert reply.message == p.DeadLettersReply({"replayed": [], "missing": ["a"]})


# ------------------------------------------------------------------------ journal and restore


def test_journal_records_accept_retry_finish_and_dead_letter(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retries=1), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)
    sched.handle(b"n1", failed("t1"), 0.2)
    kinds = [type(change) for change in sched.take_journal()]
    assert kinds == [j.Accepted, j.Attempted, j.Finished, j.DeadLettered]
    assert sched.take_journal() == []


def test_no_journal_without_a_store() -> None:
    sched = Scheduler(SchedulerConfig())
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    assert sched.journal == []


def test_restore_queues_kept_tasks_and_answers_kept_results(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retries=2, timeout=5.0), 0.0)
    sched.handle(CLIENT, execute("t2"), 0.0)
    sched.handle(b"n1", failed("t1"), 0.1)  # attempt 1 of t1 failed; t2 starts
    done = p.TaskCompleted("old", 0, b"1", None, 1)
    stored = [c.task for c in sched.take_journal() if isinstance(c, j.Accepted)]
    fresh = Scheduler(sched.config)
    fresh.restore(stored, [(done, 0.0)], [], 10, 0.0)
    assert set(fresh.tasks) == {"t1", "t2"} and len(fresh.queue) == 2
    [reply] = fresh.handle(b"c2", execute("old"), 0.1)
    assert reply.message == done
    fresh.handle(b"n2", register("n2"), 0.2)
    fresh.check_invariants()
    assert fresh.next_seq() == 10


# ------------------------------------------------------------------------ stopping


def test_stopping_broker_starts_nothing_new_and_ignores_new_tasks(sched: Scheduler) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(CLIENT, execute("t2"), 0.0)  # queued
    sched.stop_accepting()
    assert sched.handle(CLIENT, execute("t3"), 0.1) == []
    sends = sched.handle(b"n1", p.Result("t1", 0, b"1"), 0.2)
    assert [type(s.message) for s in sends] == [p.TaskCompleted]  # t2 is not started
    assert sched.running() == 0 and set(sched.tasks) == {"t2"}
    sched.check_invariants()


def test_restarted_broker_holds_tasks_until_their_nodes_are_back() -> None:
    sched = Scheduler(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    done = p.TaskCompleted("old", 0, b"1", None, 1)
    sched.restore([], [(done, 0.0)], [], 1, 0.0)  # a restart from a store
    assert sched.handle(CLIENT, execute("early"), 0.1) == []  # no node yet: it waits
    assert sched.handle(CLIENT, p.Execute("typo", "nosuch", b"[]"), 0.1) == []
    sends = sched.handle(b"n1", register("n1"), 0.5)  # offers "f"
    assert Send(b"n1", p.Run("early", "f", b"[1]", 1)) in sends
    sched.handle(b"n1", p.Result("early", 0, b"1"), 0.6)
    grace = sched.config.offer_grace_seconds
    assert sched.next_deadline() <= grace
    sched.handle(b"n1", p.Heartbeat(), grace)
    [refused] = completed(sched.tick(grace + 0.1))
    assert refused.task_id == "typo" and refused.exit_code == p.EXIT_UNKNOWN_FUNCTION
    assert refused.attempts == 0 and "typo" not in sched.dead
    [late] = sched.handle(CLIENT, p.Execute("later", "nosuch", b"[]"), grace + 0.2)
    assert isinstance(late.message, p.TaskCompleted)
    assert late.message.exit_code == p.EXIT_UNKNOWN_FUNCTION  # refused at once again
    sched.check_invariants()


def test_fresh_broker_refuses_unknown_functions_at_once() -> None:
    sched = Scheduler(SchedulerConfig())
    sched.restore([], [], [], 0, 0.0)  # an empty store: nothing to wait for
    [refused] = sched.handle(CLIENT, execute("t1"), 0.1)
    assert isinstance(refused.message, p.TaskCompleted)
    assert refused.message.exit_code == p.EXIT_UNKNOWN_FUNCTION
