"""TaskQueue's pop against a model of it: the same tasks in the same order, and the same turns
kept for what is queued later (the submitters' fair shares, protocol.md 5), whatever is
queued, popped and discarded in between."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings, strategies as st

from broker import protocol as p
from broker.core.queues import TaskQueue
from broker.core.tasks import Task

FUNCTIONS = ("f", "g", "h")


class Push(NamedTuple):
    """A task queued; `again`: a retry, queued at the front of its submitter's line."""

    function: str
    priority: int
    submitter: bytes
    again: bool


class Pop(NamedTuple):
    """Up to `most` tasks taken for a node offering `functions`."""

    functions: frozenset[str]
    most: int


class Discard(NamedTuple):
    """The `position`-th task queued so far taken out, if it is still queued."""

    position: int


Op = Push | Pop | Discard
ops = st.lists(
    st.one_of(
        st.builds(
            Push,
            st.sampled_from(FUNCTIONS),
            st.integers(p.PRIORITY_MIN, p.PRIORITY_MAX),
            st.sampled_from([b"a", b"b", b"c"]),
            st.booleans(),
        ),
        st.builds(Pop, st.frozensets(st.sampled_from(FUNCTIONS), min_size=1), st.integers(0, 9)),
        st.builds(Discard, st.integers(0, 40)),
    ),
    max_size=60,
)


def pop_one(queue: TaskQueue, functions: frozenset[str]) -> Task | None:
    """The model, without the queue's heaps: of every task queued for `functions`, the one
    first by priority, then turn, then arrival; its priority's turn moves on to it."""
    live = [task for task in queue if task.spec.function in functions]
    if not live:
        return None
    task = min(live, key=lambda t: (-t.spec.priority, t.fair_tag or 0, t.queue_stamp))
    queue.discard(task)
    priority = task.spec.priority
    queue._served[priority] = max(queue._served[priority], task.fair_tag or 0)
    return task


def replay(ops: list[Op], model: bool) -> tuple[list[list[str]], TaskQueue]:
    queue, queued, popped = TaskQueue(), list[Task](), list[list[str]]()
    for op in ops:
        if isinstance(op, Push):
            spec = p.TaskSpec(f"t{len(queued)}", op.function, b"[]", op.priority)
            task = Task(spec, len(queued), 0.0, [op.submitter], 0, None)
            queue.push(task, again=op.again)
            queued.append(task)
        elif isinstance(op, Pop):
            pop = pop_one if model else TaskQueue.pop_for
            tasks: list[Task] = []
            while len(tasks) < op.most and (one := pop(queue, op.functions)) is not None:
                tasks.append(one)
            popped.append([task.spec.task_id for task in tasks])
        elif op.position < len(queued) and queued[op.position].queue_stamp:  # still queued
            queue.discard(queued[op.position])
        queue.check_invariants()
    return popped, queue


@settings(max_examples=400, deadline=None)
@given(ops)
def test_pop_for_takes_what_the_model_takes(ops: list[Op]) -> None:
    popped, queue = replay(ops, model=False)
    expected, model = replay(ops, model=True)
    assert popped == expected
    assert queue._served == model._served
    assert queue.counts() == model.counts()
    assert queue.size == model.size
