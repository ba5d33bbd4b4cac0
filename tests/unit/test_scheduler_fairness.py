"""Fair shares between submitters within a priority (protocol.md 5.1)."""

from __future__ import annotations

from broker import protocol as p
from tests.unit.core import Core, execute, ok, register, runs

BIG, SMALL = b"big-client", b"small-client"


def serve_one_by_one(core: Core, first: str, count: int) -> list[str]:
    """Answer the running task `count` times; the order the next ones started in."""
    order, running = [], first
    for i in range(count):
        [(_, running)] = runs(core.handle(b"n", ok(running), 1.0 + i))
        order.append(running)
    return order


def test_submitters_of_one_priority_take_turns() -> None:
    core = Core()
    core.handle(b"n", register("n"), 0.0)
    [(_, first)] = runs(core.handle(BIG, execute("big-0"), 0.1))
    for i in range(1, 100):
        core.handle(BIG, execute(f"big-{i}"), 0.1)
    for i in range(3):
        core.handle(SMALL, execute(f"small-{i}"), 0.2)
    order = serve_one_by_one(core, first, 6)
    assert order == ["big-1", "small-0", "big-2", "small-1", "big-3", "small-2"]


def test_priority_still_comes_first_and_one_submitter_is_served_in_order() -> None:
    core = Core()
    core.handle(b"n", register("n"), 0.0)
    [(_, first)] = runs(core.handle(BIG, execute("big-0"), 0.1))
    for i in range(1, 4):
        core.handle(BIG, execute(f"big-{i}"), 0.1)
    core.handle(SMALL, execute("urgent", priority=9), 0.2)
    assert serve_one_by_one(core, first, 4) == ["urgent", "big-1", "big-2", "big-3"]


def test_a_submitter_that_was_alone_does_not_get_a_debt() -> None:
    """Tasks that started at once (nothing queued) move the turn on: a client that ran a
    thousand tasks alone is not pushed behind a newcomer's whole backlog."""
    core = Core()
    core.handle(b"n", register("n"), 0.0)
    for i in range(1000):
        [(_, task_id)] = runs(core.handle(BIG, execute(f"solo-{i}"), 0.1))
        core.handle(b"n", ok(task_id), 0.1)
    [(_, first)] = runs(core.handle(SMALL, execute("small-0"), 0.2))
    for i in range(1, 4):
        core.handle(SMALL, execute(f"small-{i}"), 0.2)
    core.handle(BIG, execute("big-late"), 0.3)
    assert serve_one_by_one(core, first, 2) == ["small-1", "big-late"]


def test_a_retried_task_keeps_its_turn() -> None:
    core = Core(seed=3)
    core.handle(b"n", register("n"), 0.0)
    [(_, first)] = runs(core.handle(BIG, execute("a", retries=1, retry_on=("exception",)), 0.1))
    core.handle(BIG, execute("b"), 0.1)
    core.handle(SMALL, execute("c"), 0.1)
    failed = p.Result(first, 1, b"null", p.ErrorInfo("E", "x"))
    # b and c share a turn (b came first); a waits for its backoff.
    assert runs(core.handle(b"n", failed, 0.2)) == [(b"n", "b")]
    core.tick(1.0)  # the backoff is over: a queues again, in its old turn (before c)
    assert runs(core.handle(b"n", ok("b"), 1.1)) == [(b"n", "a")]
