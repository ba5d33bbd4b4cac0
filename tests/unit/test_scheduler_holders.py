"""Who may answer a task: only the node that holds its current attempt, or the node of an
attempt given up earlier (declared dead, say) for that attempt; anything else is refused,
counted and changes nothing."""

from __future__ import annotations

import pytest

from broker import protocol as p
from broker.core.config import RetryPolicy, SchedulerConfig
from broker.core.events import Send
from tests.unit.core import Core, completed, execute, ok, register, runs

CLIENT = b"client-1"


@pytest.fixture
def sched() -> Core:
    return Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, retry=RetryPolicy(base=0)))


def node_process(name: str, pid: int) -> p.Register:
    return p.Register(name, "host-a", pid, ("f",), 1)


def test_a_stranger_cannot_answer_a_running_task(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sends = sched.handle(b"stranger", ok("t1", b'"forged"'), 0.1)
    assert sends == [Send(b"stranger", p.Disconnect("not registered: send REGISTER"))]
    assert sched.counter("refused_not_holder") == 1 and sched.pending("t1")
    [answer] = completed(sched.handle(b"n1", ok("t1", b"42"), 0.2))
    assert answer.result == b"42"


def test_another_node_cannot_answer_a_task_it_does_not_hold(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n2", register("n2"), 0.0)
    [(holder, _)] = runs(sched.handle(CLIENT, execute("t1"), 0.0))
    other = b"n1" if holder == b"n2" else b"n2"
    [refusal] = sched.handle(other, ok("t1", b'"forged"'), 0.1)
    assert refusal.peer == other and isinstance(refusal.message, p.Error)
    assert (refusal.message.code, refusal.message.task_id) == (p.ERR_NOT_HOLDER, "t1")
    assert sched.pending("t1") and sched.node(other.decode())["active"] == 0
    [answer] = completed(sched.handle(holder, ok("t1", b"42"), 0.2))
    assert answer.result == b"42"


def test_the_holder_must_answer_its_current_attempt(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(CLIENT, execute("t1", retry_on=("exception",)), 0.0)
    sched.handle(b"n1", p.Result("t1", 1, b"null", p.ErrorInfo("E", "x"), 1), 0.1)  # retried
    assert sched.attempt("t1") == 2
    [refusal] = sched.handle(b"n1", ok("t1", b'"old"', attempt=1), 0.2)
    assert isinstance(refusal.message, p.Error) and refusal.message.code == p.ERR_NOT_HOLDER
    [answer] = completed(sched.handle(b"n1", ok("t1", b"42", attempt=2), 0.3))
    assert (answer.result, answer.attempts) == (b"42", 2)


def test_a_failure_from_a_non_holder_is_not_a_verdict(sched: Core) -> None:
    sched.handle(b"n1", register("n1"), 0.0)
    sched.handle(b"n2", register("n2"), 0.0)
    [(holder, _)] = runs(sched.handle(CLIENT, execute("t1", retries=0), 0.0))
    other = b"n1" if holder == b"n2" else b"n2"
    sched.handle(other, p.Result("t1", 1, b"null", p.ErrorInfo("E", "x")), 0.1)
    assert sched.pending("t1") and sched.scheduler.dead_letter_ids() == []


def test_the_same_process_on_a_new_connection_answers_its_attempt(sched: Core) -> None:
    """A node process that lost its connection registers again (a new identity) before its
    old registration expires, and sends the RESULT it kept meanwhile."""
    sched.handle(b"old", node_process("n", 100), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.handle(b"new", node_process("n", 100), 1.0)
    [answer] = completed(sched.handle(b"new", ok("t1", b"42", attempt=1), 1.1))
    assert answer.result == b"42" and sched.counter("refused_not_holder") == 0
    old = [n for n in sched.status()["nodes"] if n["id"] == b"old".hex()]
    assert old[0]["active"] == 0  # the old registration's slot is free again


def test_a_dead_nodes_late_success_is_accepted_once(sched: Core) -> None:
    sched.handle(b"n1", node_process("n", 100), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.tick(3.5)  # n1 is declared dead; t1 waits in the queue for its next attempt
    assert not sched.registered(b"n1") and sched.queued() == 1
    # The same process comes back on a new connection and is given attempt 2 ...
    sends = sched.handle(b"n1-again", node_process("n", 100), 3.6)
    assert runs(sends) == [(b"n1-again", "t1")]
    # ... while the RESULT of attempt 1, which it kept, arrives: the work is done.
    [answer] = completed(sched.handle(b"n1-again", ok("t1", b"42", attempt=1), 3.7))
    assert answer.result == b"42" and sched.counter("late_results") == 1
    assert sched.handle(b"n1-again", ok("t1", b"43", attempt=2), 3.8) == []  # dropped
    assert sched.counter("results_dropped") == 1 and sched.node("n")["active"] == 0
    assert sched.scheduler.kept_answer("t1") == answer


def test_another_process_cannot_claim_a_dead_nodes_attempt(sched: Core) -> None:
    sched.handle(b"n1", node_process("n", 100), 0.0)
    sched.handle(CLIENT, execute("t1"), 0.0)
    sched.tick(3.5)  # n1 declared dead
    sched.handle(b"impostor", node_process("n", 999), 3.6)  # same name, another process
    sends = sched.handle(b"impostor", ok("t1", b'"forged"', attempt=1), 3.7)
    assert completed(sends) == []
    assert sched.counter("late_results") == 0
