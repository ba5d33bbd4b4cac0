"""Scopes: whose a task id is (protocol.md 5.11).

Clients choose task ids, so two clients may choose the same one. The broker keeps each task
under a reference that adds its submitter's scope: the CURVE key of the connection that sent
the EXECUTE when the broker has CURVE on, else the EXECUTE's `client` id, else the shared
scope (no client id). A reference is `SCOPE|ID`; in the shared scope it is the id itself,
or `|ID` when the id holds a "|" (so that no id of the shared scope reads as another
scope's). Neither a CURVE key (Z85) nor a client id holds a "|", so a reference splits at
its first one.

Inside the broker, in its store and to nodes a task is named by its reference; what goes
back to a submitter (TASK_COMPLETED, CANCELLED, ERROR) names the id as it was sent.
"""

from __future__ import annotations

import msgspec

from broker.protocol import TaskCompleted, TaskSpec

SEPARATOR = "|"


def reference(scope: str | None, task_id: str) -> str:
    """The broker's name for task `task_id` of `scope` (None or "": the shared scope)."""
    if scope:
        return f"{scope}|{task_id}"
    return f"|{task_id}" if SEPARATOR in task_id else task_id


def plain(ref: str) -> str:
    """The task id in reference `ref`, as its submitter named it."""
    i = ref.find(SEPARATOR)
    return ref if i < 0 else ref[i + 1 :]


def scoped_spec(scope: str | None, spec: TaskSpec) -> TaskSpec:
    """`spec` as the broker keeps it: its id and the ids it depends on as references.
    `parent` is already one (a node names its running task as its RUN did)."""
    depends_on, inputs = spec.depends_on, spec.inputs
    if depends_on is not None:
        depends_on = tuple(reference(scope, dep) for dep in depends_on)
    if inputs is not None:
        inputs = tuple(reference(scope, dep) for dep in inputs)
    return msgspec.structs.replace(
        spec, task_id=reference(scope, spec.task_id), depends_on=depends_on, inputs=inputs
    )


def shown(answer: TaskCompleted) -> TaskCompleted:
    """`answer` as its submitters are sent it: with their task id, not the reference."""
    ref = answer.task_id
    i = ref.find(SEPARATOR)
    return answer if i < 0 else msgspec.structs.replace(answer, task_id=ref[i + 1 :])
