"""Task ids scoped by their submitter (protocol.md 5.11), in the pure core: a CURVE key, or
else a client id, or else the shared scope."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Received, Send
from broker.core.scopes import plain, reference
from tests.unit.core import Core, completed, execute, ok, register, runs

ALICE, BOB, NODE = b"alice-conn", b"bob-conn", b"n"
ALICE_KEY, BOB_KEY, ADMIN_KEY = "A" * 40, "B" * 40, "C" * 40


def keyed(
    core: Core, peer: bytes, key: str, message: p.Message, now: float, *, admin: bool = False
) -> list[Send]:
    """`message` from `peer`, a CURVE connection with `key`, as the server hands it on."""
    return core.event(Received(peer, message, key, admin), now)


def as_client(message: p.Execute, client: str) -> p.Execute:
    return p.Execute(message.spec, client)


def errors(sends: list[Send]) -> list[p.Error]:
    return [s.message for s in sends if isinstance(s.message, p.Error)]


def test_references_split_at_the_first_bar_and_keep_the_shared_scope_readable() -> None:
    assert reference(None, "t") == "t" and reference("", "t") == "t"
    assert reference("alice", "t") == "alice|t"
    assert reference(None, "a|b") == "|a|b"  # never read as scope "a"
    refs = set()
    for scope in (None, "alice", "a"):
        for task_id in ("t", "a|b", "|", "x|y|z", "b"):
            ref = reference(scope, task_id)
            assert plain(ref) == task_id
            refs.add(ref)
    assert len(refs) == 15  # no two (scope, id) pairs share a reference


def test_two_keys_with_one_task_id_get_two_tasks_and_each_its_own_answer() -> None:
    core = Core()
    core.handle(NODE, register("n", capacity=2), 0.0)
    alice_runs = runs(keyed(core, ALICE, ALICE_KEY, execute("job-1", args=b"[1]"), 0.0))
    bob_runs = runs(keyed(core, BOB, BOB_KEY, execute("job-1", args=b"[2]"), 0.0))
    assert alice_runs == [(NODE, f"{ALICE_KEY}|job-1")]
    assert bob_runs == [(NODE, f"{BOB_KEY}|job-1")]  # another task, not a conflict
    assert core.counter("refused_conflict") == 0
    to_alice = core.handle(NODE, ok(f"{ALICE_KEY}|job-1", b'"alice"'), 0.1)
    to_bob = core.handle(NODE, ok(f"{BOB_KEY}|job-1", b'"bob"'), 0.1)
    assert [
        (s.peer, s.message.task_id, s.message.result)
        for s in to_alice
        if isinstance(s.message, p.TaskCompleted)
    ] == [(ALICE, "job-1", b'"alice"')]
    assert [
        (s.peer, s.message.result) for s in to_bob if isinstance(s.message, p.TaskCompleted)
    ] == [(BOB, b'"bob"')]
    # A resend gets the sender's own kept answer, under the id it sent.
    [again] = completed(keyed(core, BOB, BOB_KEY, execute("job-1", args=b"[2]"), 0.2))
    assert (again.task_id, again.result) == ("job-1", b'"bob"')


def test_another_key_can_neither_fetch_nor_cancel_nor_join_a_task() -> None:
    core = Core()
    core.handle(NODE, register("n"), 0.0)
    keyed(core, ALICE, ALICE_KEY, execute("secret"), 0.0)
    [refused] = errors(keyed(core, BOB, BOB_KEY, p.Fetch("secret"), 0.1))
    assert (refused.code, refused.task_id) == (p.ERR_NOT_FOUND, "secret")
    [refused] = errors(keyed(core, BOB, BOB_KEY, p.Cancel("secret"), 0.1))
    assert refused.code == p.ERR_NOT_FOUND
    # Naming alice's reference does not reach it either: it is scoped again, to bob.
    [refused] = errors(keyed(core, BOB, BOB_KEY, p.Cancel(f"{ALICE_KEY}|secret"), 0.1))
    assert refused.code == p.ERR_NOT_FOUND
    answer = core.handle(NODE, ok(f"{ALICE_KEY}|secret", b'"mine"'), 0.2)
    assert [s.peer for s in answer if isinstance(s.message, p.TaskCompleted)] == [ALICE]
    # Finished: still alice's alone.
    [refused] = errors(keyed(core, BOB, BOB_KEY, p.Fetch("secret"), 0.3))
    assert refused.code == p.ERR_NOT_FOUND
    [fetched] = completed(keyed(core, ALICE, ALICE_KEY, p.Fetch("secret"), 0.3))
    assert (fetched.task_id, fetched.result) == ("secret", b'"mine"')


def test_an_admin_cancels_anyones_task_by_its_reference() -> None:
    core = Core()
    core.handle(NODE, register("n"), 0.0)
    keyed(core, ALICE, ALICE_KEY, execute("busy"), 0.0)
    keyed(core, ALICE, ALICE_KEY, execute("queued"), 0.0)
    ref = f"{ALICE_KEY}|queued"
    sends = keyed(core, b"admin", ADMIN_KEY, p.Cancel(ref), 0.1, admin=True)
    cancelled = [s.message for s in sends if isinstance(s.message, p.Cancelled)]
    assert cancelled == [p.Cancelled(ref, p.WAS_QUEUED)]  # named as the admin sent it
    [answer] = completed(sends)
    assert (answer.task_id, answer.exit_code) == ("queued", 130)
    assert [s.peer for s in sends if isinstance(s.message, p.TaskCompleted)] == [ALICE]


def test_without_curve_the_client_id_is_the_scope_and_none_is_the_shared_one() -> None:
    core = Core()
    core.handle(NODE, register("n", capacity=3), 0.0)
    sends = core.handle(ALICE, as_client(execute("t"), "alice"), 0.0)
    sends += core.handle(BOB, as_client(execute("t", args=b"[9]"), "bob"), 0.0)
    sends += core.handle(b"anon", execute("t", args=b"[7]"), 0.0)
    assert sorted(task_id for _, task_id in runs(sends)) == ["alice|t", "bob|t", "t"]
    [refused] = errors(core.handle(BOB, p.Fetch("t", "alice-typo"), 0.1))
    assert refused.code == p.ERR_NOT_FOUND
    core.handle(NODE, ok("alice|t", b"1"), 0.2)
    [fetched] = completed(core.handle(b"elsewhere", p.Fetch("t", "alice"), 0.3))
    assert (fetched.task_id, fetched.result) == ("t", b"1")


def test_with_curve_the_key_wins_over_a_client_id() -> None:
    core = Core()
    core.handle(NODE, register("n"), 0.0)
    sends = keyed(core, BOB, BOB_KEY, as_client(execute("t"), "alice"), 0.0)
    assert runs(sends) == [(NODE, f"{BOB_KEY}|t")]


def test_dependencies_and_inputs_are_scoped_and_the_node_sees_the_ids_as_sent() -> None:
    core = Core()
    core.handle(NODE, register("n", capacity=2), 0.0)
    keyed(core, ALICE, ALICE_KEY, execute("a"), 0.0)
    spec = p.TaskSpec("b", "f", b'[{"$result":"a"}]', depends_on=("a",), inputs=("a",))
    # bob's "a" is unknown to bob: refused, though alice has an "a".
    [refused] = errors(keyed(core, BOB, BOB_KEY, p.Execute(spec), 0.0))
    assert (refused.code, refused.task_id) == (p.ERR_UNKNOWN_DEPENDENCY, "b")
    assert ALICE_KEY not in refused.message
    keyed(core, ALICE, ALICE_KEY, p.Execute(spec), 0.0)
    sends = core.handle(NODE, ok(f"{ALICE_KEY}|a", b"7"), 0.1)
    [run] = [s.message for s in sends if isinstance(s.message, p.Run)]
    assert (run.task_id, run.inputs) == (f"{ALICE_KEY}|b", ("a",))  # the placeholder's id
    assert run.args == b'{"arguments":[{"$result":"a"}],"results":[7]}'


def test_a_shared_scope_id_with_a_bar_never_reaches_a_scoped_task() -> None:
    core = Core()
    core.handle(NODE, register("n"), 0.0)
    core.handle(ALICE, as_client(execute("t"), "alice"), 0.0)
    [refused] = errors(core.handle(b"anon", p.Fetch("alice|t"), 0.1))
    assert refused.code == p.ERR_NOT_FOUND


def test_only_admins_see_the_recent_failures_of_every_task() -> None:
    core = Core()
    core.handle(NODE, register("n"), 0.0)
    keyed(core, ALICE, ALICE_KEY, execute("bad"), 0.0)
    core.handle(
        NODE, p.Result(f"{ALICE_KEY}|bad", 1, b"null", p.ErrorInfo("E", "alice's secret")), 0.1
    )

    def failures(sends: list[Send]) -> list[dict[str, object]]:
        [reply] = [s.message for s in sends if isinstance(s.message, p.StatusReply)]
        return list(reply.body["metrics"]["recent_failures"])

    assert failures(keyed(core, BOB, BOB_KEY, p.Status(), 0.2)) == []
    [failure] = failures(keyed(core, b"admin", ADMIN_KEY, p.Status(), 0.2, admin=True))
    assert failure["task_id"] == f"{ALICE_KEY}|bad"


def test_with_curve_the_limit_of_pending_tasks_is_per_key_not_per_connection() -> None:
    core = Core(SchedulerConfig(max_pending_per_client=2))
    core.handle(NODE, register("n"), 0.0)
    keyed(core, b"alice-1", ALICE_KEY, execute("t1"), 0.0)
    keyed(core, b"alice-2", ALICE_KEY, execute("t2"), 0.0)  # another connection, one key
    [refused] = errors(keyed(core, b"alice-3", ALICE_KEY, execute("t3"), 0.0))
    assert refused.code == p.ERR_TOO_MANY_TASKS and "this client's key" in refused.message
    assert core.pending(f"{BOB_KEY}|u") is False
    keyed(core, BOB, BOB_KEY, execute("u"), 0.0)  # other keys are not limited
    assert core.pending(f"{BOB_KEY}|u")
    core.handle(NODE, ok(f"{ALICE_KEY}|t1"), 0.1)  # one answered: room for one more
    assert not errors(keyed(core, b"alice-3", ALICE_KEY, execute("t3"), 0.2))
