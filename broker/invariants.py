"""Consistency checks of the scheduler's whole state, for tests and simulations. Pure."""

from __future__ import annotations

from broker.taskflow import TaskFlow


def check_invariants(flow: TaskFlow) -> None:
    """Raise AssertionError if the pool, the queue and the task table disagree."""
    flow.pool.check_invariants()
    flow.queue.check_invariants()
    flow.results.check_invariants()
    queued = {r.task_id for r in flow.queue}
    running: dict[str, set[bytes]] = {}
    for node in flow.pool.nodes.values():
        for task_id in node.active:
            running.setdefault(task_id, set()).add(node.identity)
    for task_id, record in flow.tasks.items():
        if record.node is None:
            waiting = record.retry_due is not None
            assert (task_id in queued) != waiting, f"{task_id}: queued xor waiting to retry"
            assert task_id not in running, f"queued task {task_id} holds a slot"
        else:
            assert running.get(task_id) == {record.node}, f"{task_id} is not on its node"
            assert task_id not in queued, f"running task {task_id} is also queued"
    assert queued <= flow.tasks.keys(), "queue holds an answered task"
    assert not any(t in flow.results for t in flow.tasks), "a task is pending and answered"
    for function in flow.queue.counts():
        idle = flow.accepting and flow.pool.has_free(function)
        assert not idle, f"{function} waits beside a free slot"
