"""Cancellation, results by id and task ids that mean one request (protocol.md 3.17-3.20,
5.6, 6), in the pure core."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import RetryPolicy, SchedulerConfig
from broker.core.events import Send
from broker.core.tasks import RUNNING
from tests.unit.core import Core, completed, execute, ok, runs, warmed_node

CLIENT = b"client-1"
OTHER = b"client-2"
NO_BACKOFF = RetryPolicy(base=0.0)


def stop_node(name: str, capacity: int = 1, prefetch: int = 0, stop: bool = True) -> p.Register:
    return p.Register(name, "h", 1, ("f",), capacity, None, prefetch, stop)


def replies(sends: list[Send], kind: type) -> list[tuple[bytes, object]]:
    return [(s.peer, s.message) for s in sends if isinstance(s.message, kind)]


def cancelled(task_id: str, was: str) -> p.Cancelled:
    return p.Cancelled(task_id, was)


def test_a_queued_task_is_answered_130_and_never_runs() -> None:
    core = Core()
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("busy"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    sends = core.handle(OTHER, p.Cancel("t1"), 0.1)
    [answer] = completed(sends)
    assert (answer.task_id, answer.exit_code, answer.attempts) == ("t1", 130, 0)
    assert answer.error is not None and answer.error.type == "Cancelled"
    assert replies(sends, p.Cancelled) == [(OTHER, cancelled("t1", "queued"))]
    assert [s.peer for s in sends if isinstance(s.message, p.TaskCompleted)] == [CLIENT]
    assert runs(core.handle(b"n", ok("busy"), 0.2)) == []  # the slot frees: t1 does not start
    assert core.counter("cancelled") == 1 and core.status()["dead_letters"] == 0
    # The answer is kept: a resend and a FETCH get 130.
    [again] = completed(core.handle(CLIENT, execute("t1"), 0.3))
    assert again.exit_code == 130
    [fetched] = completed(core.handle(OTHER, p.Fetch("t1"), 0.3))
    assert fetched.exit_code == 130


def test_a_running_task_is_stopped_and_its_slot_stays_busy_until_the_node_answers() -> None:
    core = Core()
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(CLIENT, execute("t2"), 0.0)  # queued behind t1
    sends = core.handle(OTHER, p.Cancel("t1"), 0.1)
    assert replies(sends, p.Stop) == [(b"n", p.Stop(("t1",)))]
    assert replies(sends, p.Cancelled) == [(OTHER, cancelled("t1", "running"))]
    [answer] = completed(sends)
    assert (answer.exit_code, answer.attempts) == (130, 1)
    assert runs(sends) == []  # t2 waits: the node still runs t1 until it says otherwise
    stopped = p.Result("t1", 130, b"null", p.ErrorInfo("Cancelled", "stopped"), 1)
    sends = core.handle(b"n", stopped, 0.2)
    assert runs(sends) == [(b"n", "t2")] and completed(sends) == []
    assert core.counter("results_dropped") == 1


def test_a_node_without_stop_runs_a_cancelled_task_to_its_end() -> None:
    core = Core()
    core.handle(b"n", stop_node("n", stop=False), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    sends = core.handle(OTHER, p.Cancel("t1"), 0.1)
    assert replies(sends, p.Stop) == [] and replies(sends, p.Retract) == []
    assert completed(sends)[0].exit_code == 130
    assert completed(core.handle(b"n", ok("t1"), 5.0)) == []  # its success is dropped
    assert core.counter("results_dropped") == 1


def test_a_held_task_leaves_the_held_order_and_is_stopped() -> None:
    core = Core()
    warmed_node(core, stop_node("n", capacity=1, prefetch=4))
    for task_id in ("run", "h1", "h2"):
        core.handle(CLIENT, execute(task_id), 1.0)
    assert core.node("n")["held"] == 2
    sends = core.handle(OTHER, p.Cancel("h1"), 1.1)
    assert replies(sends, p.Stop) == [(b"n", p.Stop(("h1",)))]
    assert replies(sends, p.Cancelled) == [(OTHER, cancelled("h1", "held"))]
    assert core.node("n")["held"] == 2  # h1 keeps its place until the node answers for it
    # The running task ends: h2 starts (not h1); h1's RESULT 130 frees its place.
    core.handle(b"n", ok("run"), 1.2)
    view = core.scheduler.task_view("h2")
    assert view is not None and view.state is RUNNING
    core.handle(b"n", p.Result("h1", 130, b"null", p.ErrorInfo("Cancelled", "x"), 1), 1.3)
    assert (core.node("n")["active"], core.node("n")["held"]) == (1, 0)


def test_a_held_task_on_a_node_without_stop_is_retracted() -> None:
    core = Core()
    warmed_node(core, stop_node("n", capacity=1, prefetch=4, stop=False))
    for task_id in ("run", "h1"):
        core.handle(CLIENT, execute(task_id), 1.0)
    sends = core.handle(OTHER, p.Cancel("h1"), 1.1)
    assert replies(sends, p.Retract) == [(b"n", p.Retract(("h1",)))]
    core.handle(b"n", p.Retracted(("h1",), ()), 1.2)
    assert core.node("n")["active"] == 1 and core.counter("retracted") == 0


def test_cancel_of_a_finished_or_unknown_task_changes_nothing() -> None:
    core = Core()
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"n", ok("t1"), 0.1)
    sends = core.handle(OTHER, p.Cancel("t1"), 0.2)
    assert replies(sends, p.Cancelled) == [(OTHER, cancelled("t1", "finished"))]
    assert completed(core.handle(OTHER, p.Fetch("t1"), 0.3))[0].exit_code == 0
    [(peer, error)] = replies(core.handle(OTHER, p.Cancel("nope"), 0.3), p.Error)
    assert isinstance(error, p.Error) and (peer, error.code) == (OTHER, p.ERR_NOT_FOUND)
    assert error.task_id == "nope" and "no such task" in error.message


def test_fetch_waits_for_a_pending_task_and_reads_dead_letters() -> None:
    core = Core()
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    assert core.handle(OTHER, p.Fetch("t1"), 0.1) == []  # pending: OTHER waits with CLIENT
    sends = core.handle(b"n", ok("t1", b"7"), 0.2)
    assert sorted(peer for peer, _ in replies(sends, p.TaskCompleted)) == [CLIENT, OTHER]
    core.handle(CLIENT, execute("bad", retries=0), 0.3)
    core.handle(b"n", p.Result("bad", 1, b"null", p.ErrorInfo("E", "boom"), 1), 0.4)
    core.scheduler._results.forget("bad")  # the kept answer gone: the dead letter answers
    [answer] = completed(core.handle(OTHER, p.Fetch("bad"), 0.5))
    assert (answer.exit_code, answer.error, answer.result) == (1, p.ErrorInfo("E", "boom"), b"null")
    [(_, error)] = replies(core.handle(OTHER, p.Fetch("nope"), 0.5), p.Error)
    assert isinstance(error, p.Error) and error.code == p.ERR_NOT_FOUND


def test_a_known_task_id_with_another_request_is_refused() -> None:
    core = Core()
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("job-42", args=b"[2]"), 0.0)
    [(_, error)] = replies(core.handle(OTHER, execute("job-42", args=b"[7]"), 0.1), p.Error)
    assert isinstance(error, p.Error) and error.code == p.ERR_CONFLICT
    assert error.task_id == "job-42" and "other arguments" in error.message
    assert core.handle(OTHER, execute("job-42", args=b"[2]"), 0.1) == []  # the same: waits
    core.handle(b"n", ok("job-42", b"4"), 0.2)
    other_function = execute("job-42", "g", args=b"[2]")
    [(_, error)] = replies(core.handle(OTHER, other_function, 0.3), p.Error)
    assert isinstance(error, p.Error) and "other function (f)" in error.message
    [answer] = completed(core.handle(OTHER, execute("job-42", args=b"[2]"), 0.3))
    assert answer.result == b"4"
    assert core.counter("refused_conflict") == 2


def failure(task_id: str, code: int, retry: bool = False) -> p.Result:
    return p.Result(task_id, code, b"null", p.ErrorInfo("E", "x"), None, retry)


def test_failures_are_retried_as_ray_does_unless_asked() -> None:
    core = Core(SchedulerConfig(retry=NO_BACKOFF))
    core.handle(b"n", stop_node("n"), 0.0)
    cases = [
        ("raised", 1, False, None, False),
        ("declared", 1, True, None, True),
        ("asked", 1, False, ("exception",), True),
        ("timed-out", 124, False, None, False),
        ("timeout-asked", 124, False, ("timeout",), True),
        ("crashed", 70, False, None, True),
        ("bad-args", 2, False, ("exception", "timeout"), False),
    ]
    for task_id, code, declared, retry_on, retried in cases:
        core.handle(CLIENT, execute(task_id, retries=1, retry_on=retry_on), 1.0)
        sends = core.handle(b"n", failure(task_id, code, declared), 1.0)
        assert (completed(sends) == []) == retried, task_id
        if retried:
            assert core.attempt(task_id) == 2, task_id
            core.handle(b"n", ok(task_id), 1.0)


def test_the_brokers_default_retry_on_applies_to_tasks_that_do_not_say() -> None:
    core = Core(SchedulerConfig(retry=NO_BACKOFF, retry_on=("exception",)))
    core.handle(b"n", stop_node("n"), 0.0)
    core.handle(CLIENT, execute("t1", retries=1), 0.0)
    assert completed(core.handle(b"n", failure("t1", 1), 0.1)) == []
    core.handle(b"n", ok("t1"), 0.2)
    core.handle(CLIENT, execute("t2", retries=1, retry_on=()), 0.3)  # [] names none
    assert completed(core.handle(b"n", failure("t2", 1), 0.4))[0].exit_code == 1
