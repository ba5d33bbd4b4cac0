"""Inputs: the results of dependencies that a task's node receives with its arguments.

A task names them in EXECUTE `inputs` (each also one of its `depends_on`). The broker keeps
each input's result frame for the task from the moment it arrives (or from the kept answers,
for an input answered before the task came) until the task is answered, whatever
`--keep-results` says; `Pins` counts, for the store, which answers pending tasks still need.
When the last dependency succeeds, `run_payload` joins the arguments and the results into
the one payload frame its RUN carries (protocol.md 5.8), by concatenation: the broker never
decodes them. Pure state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def run_payload(args: bytes, results: Iterable[bytes]) -> bytes:
    """The payload of a RUN with inputs: the JSON object {"arguments": the arguments frame,
    "results": [the result frame of each input]}. An object, not an array, so that a node
    written before inputs existed refuses it (exit 2) instead of misreading it."""
    return b"".join((b'{"arguments":', args, b',"results":[', b",".join(results), b"]}"))


class Pins:
    """How many pending tasks need the answer of each task id as an input."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def ids(self) -> Collection[str]:
        """The task ids whose answers must be kept (a live view)."""
        return self._counts.keys()

    def add(self, inputs: Iterable[str]) -> None:
        counts = self._counts
        for task_id in inputs:
            counts[task_id] = counts.get(task_id, 0) + 1

    def remove(self, inputs: Iterable[str]) -> None:
        counts = self._counts
        for task_id in inputs:
            left = counts[task_id] - 1
            if left:
                counts[task_id] = left
            else:
                del counts[task_id]

    def check_invariants(self, needed: Iterable[Iterable[str]]) -> None:
        """`needed`: the inputs of each pending task."""
        expected: dict[str, int] = {}
        for inputs in needed:
            for task_id in inputs:
                expected[task_id] = expected.get(task_id, 0) + 1
        assert expected == self._counts, "pinned answers drifted from the pending tasks' inputs"
