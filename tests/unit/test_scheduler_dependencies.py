"""Tasks that depend on other tasks (EXECUTE depends_on, protocol.md 5.7), in the pure core."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Restored
from broker.core.journal import PendingTask
from tests.unit.core import Core, completed, execute, ok, register, runs, two_slots

CLIENT = b"client-1"


def after(task_id: str, *deps: str, queue_timeout: float | None = None) -> p.Execute:
    spec = p.TaskSpec(task_id, "f", b"[]", queue_timeout=queue_timeout, depends_on=deps or None)
    return p.Execute(spec)


def failed(task_id: str) -> p.Result:
    return p.Result(task_id, 1, b"null", p.ErrorInfo("ValueError", "bad"))


def test_a_dependent_waits_until_its_dependencies_succeed() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, execute("b"), 0.0)
    assert runs(core.handle(CLIENT, after("c", "a", "b"), 0.1)) == []
    assert core.status()["waiting_dependencies"] == 1 and core.queued() == 0
    assert runs(core.handle(b"n", ok("a"), 0.2)) == []  # b still runs
    assert runs(core.handle(b"n", ok("b"), 0.3)) == [(b"n", "c")]
    assert core.status()["waiting_dependencies"] == 0
    [answer] = completed(core.handle(b"n", ok("c", b"7"), 0.4))
    assert answer.result == b"7"


def test_a_dependency_already_answered_counts_as_done() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(b"n", ok("a"), 0.1)
    assert runs(core.handle(CLIENT, after("b", "a"), 0.2)) == [(b"n", "b")]


def test_a_failed_dependency_fails_its_dependents_transitively_at_once() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a", retries=0), 0.0)
    core.handle(CLIENT, after("b", "a"), 0.0)
    core.handle(CLIENT, after("c", "b"), 0.0)
    answers = {m.task_id: m for m in completed(core.handle(b"n", failed("a"), 0.1))}
    assert answers["a"].exit_code == 1
    b, c = answers["b"], answers["c"]
    assert (b.exit_code, b.attempts, c.exit_code) == (p.EXIT_DEPENDENCY_FAILED, 0, 66)
    assert b.error is not None and c.error is not None
    assert (
        b.error.message == "its dependency a (f) failed (exit 1: ValueError: bad); it did not run"
    )
    # The chain's message names the task that failed first.
    assert c.error.message == f"its dependency b (f) did not run either; {b.error.message}"
    assert core.status()["dead_letters"] == 1  # a only: its dependents did not run
    assert core.counter("dependency_failed") == 2
    # Depending on a failed task now is answered at once, without running it.
    [late] = completed(core.handle(CLIENT, after("d", "a"), 0.2))
    assert (late.exit_code, late.attempts) == (66, 0)


def test_cancelling_a_task_cancels_its_dependents() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, after("b", "a"), 0.0)
    sends = core.handle(CLIENT, p.Cancel("a"), 0.1)
    answers = {m.task_id: m for m in completed(sends)}
    assert answers["a"].exit_code == 130 and answers["b"].exit_code == 130
    assert answers["b"].error is not None
    assert answers["b"].error.message == "its dependency a (f) was cancelled"
    # Cancelling a dependent alone leaves its dependency running.
    core.handle(CLIENT, execute("x"), 0.2)
    core.handle(CLIENT, after("y", "x"), 0.2)
    [cancelled] = completed(core.handle(CLIENT, p.Cancel("y"), 0.3))
    assert cancelled.task_id == "y"
    assert [m.task_id for m in completed(core.handle(b"n", ok("x"), 0.4))] == ["x"]


def test_unknown_dependencies_and_the_task_itself_are_refused() -> None:
    core = two_slots()
    for message in (after("b", "nosuch"), after("self", "self")):
        [send] = core.handle(CLIENT, message, 0.0)
        assert isinstance(send.message, p.Error)
        assert send.message.code == p.ERR_UNKNOWN_DEPENDENCY
        assert "does not know" in send.message.message
    assert core.counter("refused_unknown_dependency") == 2 and core.counter("accepted") == 0


def test_a_waiting_dependent_still_expires_by_its_queue_timeout() -> None:
    core = two_slots()
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(CLIENT, after("b", "a", queue_timeout=1.0), 0.0)
    [expired] = completed(core.tick(1.5))
    assert (expired.task_id, expired.exit_code) == ("b", p.EXIT_EXPIRED)
    assert completed(core.handle(b"n", ok("a"), 2.0))[0].task_id == "a"


def test_a_restored_dependent_waits_again_or_fails_with_its_dependency() -> None:
    core = Core(SchedulerConfig())
    specs = {
        "a": p.TaskSpec("a", "f", b"[]"),
        "b": p.TaskSpec("b", "f", b"[]", depends_on=("a",)),
        "c": p.TaskSpec("c", "f", b"[]", depends_on=("gone",)),  # finished, forgotten
        "d": p.TaskSpec("d", "f", b"[]", depends_on=("failed",)),
    }
    failure = p.TaskCompleted("failed", 1, b"null", p.ErrorInfo("E", "x"), 1)
    pending = [PendingTask(spec, seq, 0.0, 0) for seq, spec in enumerate(specs.values())]
    sends = core.event(Restored(pending, [(failure, 0.0)], [], 10), 0.0)
    assert [m.task_id for m in completed(sends)] == []  # nobody asked for d yet
    assert core.answered("d") and not core.pending("d")
    assert core.status()["waiting_dependencies"] == 1  # b, for a
    started = runs(core.handle(b"n", register("n", capacity=2), 0.1))
    assert sorted(task_id for _, task_id in started) == ["a", "c"]
    assert runs(core.handle(b"n", ok("a"), 0.2)) == [(b"n", "b")]


def test_a_dependent_accepted_in_a_grace_is_refused_when_the_grace_ends_without_a_node() -> None:
    core = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    core.handle(b"n", register("n"), 0.0)
    core.handle(CLIENT, execute("a"), 0.0)
    core.handle(b"n", p.Deregister(), 0.1)  # its last node leaves: f stays offered a while
    assert core.handle(CLIENT, after("b", "a"), 0.2) == []  # waits for a, and for a node
    [refused] = completed(core.tick(0.1 + core.config.offer_grace_seconds))
    assert (refused.task_id, refused.exit_code) == ("b", p.EXIT_UNKNOWN_FUNCTION)
    assert [m.task_id for m in completed(core.handle(b"n", ok("a"), 20.0))] == ["a"]
