"""The in-process workloads of `tools/bench.py instructions`, run briefly without valgrind: a
count is only worth having if the workload does what it says. How many instructions it
takes is the tool's to measure, not a test's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import load_tool


def test_broker_bulk_answers_every_task_with_a_queue_kept_and_nothing_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_tool("bench", "bench_workloads")

    def stub(module: Any, name: str, value: Any) -> None:  # undone after the test
        monkeypatch.setattr(module, name, value)

    monkeypatch.setattr(bench, "stub", stub)
    steps = 200
    workload = bench.BrokerBulk(steps)
    for i in range(steps):
        workload(i)
    scheduler = workload.broker.scheduler
    counters = scheduler.counters
    assert not [name for name in counters if name.startswith("refused")]
    # Tasks flow at the nodes' pace: up to one EXECUTE's worth a step once the nodes'
    # windows have grown (they start small, until the broker has seen tasks run), the rest
    # queued.
    batch = bench.BULK_BATCH
    assert workload.answered >= steps * batch // 2
    assert counters["completed"] == workload.answered
    assert counters["accepted"] == (steps + bench.BULK_WINDOW) * batch
    windows = 2 * (1 + bench.DEFAULT_PREFETCH)  # what the two nodes may run and hold
    assert len(scheduler.pending()) > windows  # the rest waits in the broker's queue
    assert all(len(sent) > 0 for sent in workload.sent.values())  # both nodes hold tasks
    scheduler.check_invariants()
