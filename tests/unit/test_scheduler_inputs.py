"""Results passed to dependent tasks (EXECUTE inputs, protocol.md 5.8), in the pure core."""

from __future__ import annotations

import orjson

from broker import protocol as p
from broker.core.config import ResultsConfig, SchedulerConfig
from broker.core.events import Restored, Send
from broker.core.journal import PendingTask
from tests.unit.core import Core, completed, execute, ok, register, two_slots

CLIENT = b"client-1"


def using(task_id: str, args: bytes, *inputs: str, after: tuple[str, ...] = ()) -> p.Execute:
    spec = p.TaskSpec(task_id, "f", args, depends_on=(*inputs, *after), inputs=inputs)
    return p.Execute(spec)


def run_messages(sends: list[Send]) -> list[p.Run]:
    return [s.message for s in sends if isinstance(s.message, p.Run)]


def test_a_dependent_runs_with_its_inputs_results_after_its_arguments() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, execute("b"), 0.0)
    args = b'[{"$result":"b"},10,{"$result":"a"}]'
    assert run_messages(core.handle(CLIENT, using("c", args, "b", "a"), 0.1)) == []
    assert run_messages(core.handle(b"n", ok("a", b"3"), 0.2)) == []
    [run] = run_messages(core.handle(b"n", ok("b", b'{"big":[1,2]}'), 0.3))
    assert run.inputs == ("b", "a")
    # The frames joined, byte for byte: the arguments, the results of b and a.
    assert (
        run.args
        == b'{"arguments":[{"$result":"b"},10,{"$result":"a"}],"results":[{"big":[1,2]},3]}'
    )
    assert orjson.loads(run.args)["results"] == [{"big": [1, 2]}, 3]
    assert p.decode(p.encode(run)) == run


def test_an_order_only_dependency_sends_no_result() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, execute("b"), 0.0)
    core.handle(CLIENT, using("c", b'[{"$result":"a"}]', "a", after=("b",)), 0.0)
    core.handle(b"n", ok("b", b'"big result"'), 0.1)
    [run] = run_messages(core.handle(b"n", ok("a", b"7"), 0.2))
    assert (run.inputs, run.args) == (("a",), b'{"arguments":[{"$result":"a"}],"results":[7]}')


def test_an_input_answered_before_the_dependent_comes_is_taken_from_the_kept_answers() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(b"n", ok("a", b"5"), 0.1)
    [run] = run_messages(core.handle(CLIENT, using("b", b'[{"$result":"a"}]', "a"), 0.2))
    assert run.args == b'{"arguments":[{"$result":"a"}],"results":[5]}'


def test_a_task_without_inputs_runs_its_arguments_as_they_came() -> None:
    core = two_slots()
    [run] = run_messages(core.handle(CLIENT, execute("a", args=b"[1, 2]"), 0.0))
    assert (run.inputs, run.args) == (None, b"[1, 2]")


def test_an_input_is_kept_for_its_dependent_whatever_the_answers_ttl() -> None:
    config = SchedulerConfig(heartbeat_interval=100.0, results=ResultsConfig(ttl=0.5))
    core = two_slots(config)
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, execute("slow"), 0.0)
    core.handle(CLIENT, using("c", b'[{"$result":"a"}]', "a", after=("slow",)), 0.0)
    core.handle(b"n", ok("a", b'"from a"'), 0.1)
    assert core.scheduler.pinned_answers() == {"a"}
    core.tick(10.0)  # a's kept answer expires
    assert not core.answered("a")
    [run] = run_messages(core.handle(b"n", ok("slow"), 10.1))
    assert run.args == b'{"arguments":[{"$result":"a"}],"results":["from a"]}'
    # Until c is answered, the store must keep a's answer; then nothing is pinned.
    assert core.scheduler.pinned_answers() == {"a"}
    core.handle(b"n", ok("c"), 10.2)
    assert not core.scheduler.pinned_answers()


def test_a_retried_dependent_gets_its_inputs_again() -> None:
    core = two_slots(SchedulerConfig(heartbeat_interval=100.0))
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, using("c", b'[{"$result":"a"}]', "a"), 0.0)
    [first] = run_messages(core.handle(b"n", ok("a", b"1"), 0.1))
    core.handle(b"m", register("m"), 0.15)
    sends = core.lost(b"n", 0.2)  # the node dies while c runs: c runs again elsewhere
    sends += core.tick(core.next_deadline())  # after its backoff, if any
    [again] = run_messages(sends)
    assert again.task_id == "c" and again.attempt == 2 and again.args == first.args


def test_a_replayed_dependent_whose_input_is_forgotten_fails_naming_it() -> None:
    config = SchedulerConfig(results=ResultsConfig(ttl=0.5))
    core = two_slots(config)
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, using("c", b'[{"$result":"a"}]', "a", after=()), 0.0)
    core.handle(b"n", ok("a", b"1"), 0.1)
    core.handle(b"n", p.Result("c", 1, b"null", p.ErrorInfo("E", "x")), 0.2)
    core.tick(10.0)  # a's answer is forgotten; c is a dead letter (no retry on exceptions)
    sends = core.handle(CLIENT, p.Dlq("replay", "c"), 10.1)
    assert run_messages(sends) == []
    assert core.answered("c")
    answer = core.scheduler.kept_answer("c")
    assert answer is not None and answer.exit_code == p.EXIT_DEPENDENCY_FAILED
    assert answer.error is not None and "its input a is no longer kept" in answer.error.message
    assert not core.scheduler.pinned_answers()


def test_a_restored_dependent_takes_its_inputs_from_the_stores_answers() -> None:
    # The store kept a's answer (pinned) although it is older than the answers' TTL.
    config = SchedulerConfig(results=ResultsConfig(ttl=1.0))
    core = Core(config)
    c = p.TaskSpec("c", "f", b'[{"$result":"a"}]', depends_on=("a", "b"), inputs=("a",))
    b = p.TaskSpec("b", "f", b"[]")
    a_answer = p.TaskCompleted("a", 0, b"42", None, 1)
    pending = [PendingTask(b, 1, 0.0, 0), PendingTask(c, 2, 0.0, 0)]
    core.event(Restored(pending, [(a_answer, -100.0)], [], 3), 0.0)
    core.tick(5.0)  # the kept answers expire, c keeps what it took
    core.handle(b"n", register("n", capacity=2), 5.1)
    [run] = run_messages(core.handle(b"n", ok("b"), 5.2))
    assert run.args == b'{"arguments":[{"$result":"a"}],"results":[42]}'


def test_a_restored_dependent_whose_input_the_store_lost_fails_at_once() -> None:
    core = Core()
    c = p.TaskSpec("c", "f", b'[{"$result":"a"}]', depends_on=("a",), inputs=("a",))
    core.event(Restored([PendingTask(c, 1, 0.0, 0)], [], [], 2), 0.0)
    answer = core.scheduler.kept_answer("c")
    assert answer is not None and answer.exit_code == p.EXIT_DEPENDENCY_FAILED


def test_a_failed_input_fails_the_dependent_naming_it() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a", retries=0), 0.0)
    core.handle(CLIENT, using("c", b'[{"$result":"a"}]', "a"), 0.0)
    sends = core.handle(b"n", p.Result("a", 1, b"null", p.ErrorInfo("KeyError", "k")), 0.1)
    answers = {m.task_id: m for m in completed(sends)}
    error = answers["c"].error
    assert answers["c"].exit_code == 66 and error is not None
    assert error.message == "its dependency a (f) failed (exit 1: KeyError: k); it did not run"
    assert not core.scheduler.pinned_answers()
