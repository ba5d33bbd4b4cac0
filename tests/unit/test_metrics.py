"""The broker's metrics (broker.core.metrics): histograms, rates, and what the scheduler
counts per function and node, read through STATUS_REPLY `metrics` as a client reads it."""

from __future__ import annotations

from typing import Any

import pytest

from broker import protocol as p
from broker.core.config import RetryPolicy, SchedulerConfig
from broker.core.metrics import BOUNDS, OUTCOMES, Histogram, Window
from tests.unit.core import Core, execute, ok, register, runs

CLIENT = b"client"


def test_a_histogram_counts_each_value_in_the_first_bucket_whose_bound_it_does_not_pass() -> None:
    h = Histogram()
    for seconds in (0.0, 0.0005, 0.0006, 1.0, 1e9):
        h.observe(seconds)
    counts = h.view()["counts"]
    assert len(counts) == len(BOUNDS) + 1
    assert counts[0] == 2  # 0 and 0.0005: le 0.0005
    assert counts[1] == 1  # 0.0006: le 0.001
    assert counts[BOUNDS.index(1.0)] == 1
    assert counts[-1] == 1  # above the last bound: +Inf
    assert h.view()["sum"] == pytest.approx(1e9 + 1.0011)


def test_a_window_gives_the_rate_of_a_steady_total() -> None:
    window = Window(0.0)
    total = 0
    for tick in range(1, 1001):  # 10 a second for 100 s, sampled before each addition
        now = tick / 10
        if window.due(now):
            window.sample(now, total)
        total += 1
    assert window.rate(100.0, total, 1.0) == pytest.approx(10.0, rel=0.1)  # 10 or 11 in 1 s
    assert window.rate(100.0, total, 60.0) == pytest.approx(10.0, rel=0.02)
    assert len(window.samples) <= 63  # a minute of samples, a second apart, and one more


def test_a_window_sees_a_burst_after_an_idle_stretch_as_a_burst() -> None:
    window = Window(0.0)
    window.sample(0.5, 0)
    # Idle for 100 s, then 500 answers in the last half second (sampled before the first).
    assert window.due(100.0)
    window.sample(100.0, 0)
    assert window.rate(100.5, 500, 1.0) == pytest.approx(500.0)
    assert window.rate(100.5, 500, 60.0) == pytest.approx(500 / 60)
    # Sampled only at the idle stretch's start: no growth since, at any span.
    assert window.rate(200.0, 500, 1.0) == 0.0


def test_a_young_window_divides_by_the_time_it_has() -> None:
    window = Window(10.0)
    assert window.rate(12.0, 100, 60.0) == pytest.approx(50.0)
    assert window.rate(10.0, 0, 1.0) == 0.0


def metrics(core: Core, now: float) -> dict[str, Any]:
    body = core.status(now)
    view: dict[str, Any] = body["metrics"]
    return view


def test_a_function_counts_its_tasks_and_times_them() -> None:
    core = Core()
    core.handle(b"n", register("n", ("f",)), 0.0)
    core.handle(CLIENT, execute("t1"), 1.0)  # starts at once
    core.handle(CLIENT, execute("t2"), 1.0)  # waits 2 s for the slot
    core.handle(b"n", ok("t1"), 3.0)  # ran 2 s
    core.handle(b"n", ok("t2"), 3.5)  # ran 0.5 s
    f = metrics(core, 4.0)["functions"]["f"]
    assert (f["accepted"], f["started"], f["succeeded"], f["failed"]) == (2, 2, 2, 0)
    assert f["queue_wait"]["sum"] == pytest.approx(2.0)
    assert f["run_time"]["sum"] == pytest.approx(2.5)
    assert f["end_to_end"]["sum"] == pytest.approx(2.0 + 2.5)
    run_counts = f["run_time"]["counts"]
    assert run_counts[BOUNDS.index(0.5)] == 1 and run_counts[BOUNDS.index(2.5)] == 1
    assert sum(f["queue_wait"]["counts"]) == 2


def test_outcomes_retries_and_dead_letters_are_counted_by_function() -> None:
    config = SchedulerConfig(retry=RetryPolicy(retries=1, base=0.0, jitter=0.0))
    core = Core(config)
    core.handle(b"n", register("n", ("f", "g")), 0.0)
    core.handle(CLIENT, execute("crash", "g"), 0.0)
    crashed = p.Result("crash", p.EXIT_WORKER_CRASHED, b"null", p.ErrorInfo("Crash", "x"))
    assert runs(core.handle(b"n", crashed, 0.1)) == [(b"n", "crash")]  # retried at once
    core.handle(b"n", crashed, 0.2)  # its last attempt: dead-lettered
    core.handle(CLIENT, execute("slow", "f"), 0.3)
    timeout = p.Result("slow", p.EXIT_TIMEOUT, b"null", p.ErrorInfo("Timeout", "too slow"))
    core.handle(b"n", timeout, 0.4)
    core.handle(CLIENT, execute("late", "f", queue_timeout=0.5), 0.5)  # the slot is free
    view = metrics(core, 1.0)
    g, f = view["functions"]["g"], view["functions"]["f"]
    assert (g["retried"], g["failed"], g["dead_lettered"], g["started"]) == (1, 1, 1, 2)
    assert (f["timed_out"], f["succeeded"], f["accepted"]) == (1, 0, 2)
    assert set(OUTCOMES) <= set(f)
    failures = view["recent_failures"]
    assert [x["task_id"] for x in failures] == ["slow", "crash"]  # newest first
    assert failures[0]["exit_code"] == p.EXIT_TIMEOUT
    assert failures[0]["error"] == "Timeout: too slow"
    assert failures[1]["attempts"] == 2


def test_a_node_shows_its_busy_slots_failures_and_utilisation() -> None:
    core = Core()
    core.handle(b"n", register("n", ("f",), capacity=2), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"n", ok("t1"), 30.0)  # one of two slots busy for the first 30 s
    core.handle(CLIENT, execute("t2"), 30.0)
    fail = p.Result("t2", p.EXIT_FUNCTION_ERROR, b"null", p.ErrorInfo("E", "no"))
    core.handle(b"n", fail, 31.0)
    core.handle(CLIENT, execute("t3"), 50.0)  # still running at 60 s
    node = core.status(60.0)["nodes"][0]
    assert (node["busy"], node["completed"], node["failed"]) == (1, 2, 1)
    assert node["busy_seconds"] == pytest.approx(30 + 1 + 10)
    assert node["utilisation"] == pytest.approx(41 / 120, abs=0.001)


def test_queued_tasks_are_shown_by_priority() -> None:
    core = Core()
    for i, priority in enumerate((1, 1, 9)):
        core.handle(CLIENT, execute(f"t{i}", priority=priority), 0.0)
    assert core.status(0.0)["queued_by_priority"] == {}  # no node: answered 127, none queued
    core.handle(b"n", register("n", ("f",)), 0.0)
    core.handle(CLIENT, execute("run"), 0.0)  # takes the only slot
    for i, priority in enumerate((1, 1, 9)):
        core.handle(CLIENT, execute(f"q{i}", priority=priority), 0.0)
    assert core.status(0.0)["queued_by_priority"] == {"1": 2, "9": 1}


def test_the_throughput_counts_answers_per_second() -> None:
    core = Core()
    core.handle(b"n", register("n", ("f",)), 0.0)
    for i in range(120):  # one answer every half second for a minute
        now = i / 2
        core.handle(CLIENT, execute(f"t{i}"), now)
        core.handle(b"n", ok(f"t{i}"), now)
    view = metrics(core, 60.0)
    assert view["throughput_last_minute"] == pytest.approx(2.0, rel=0.05)
    assert view["throughput_last_second"] == pytest.approx(2.0, rel=0.5)
    assert view["uptime"] == 60.0


def test_metrics_can_be_turned_off() -> None:
    core = Core(SchedulerConfig(metrics=False))
    core.handle(b"n", register("n", ("f",)), 0.0)
    core.handle(CLIENT, execute("t1"), 0.0)
    core.handle(b"n", ok("t1"), 1.0)
    body = core.status(1.0)
    assert "metrics" not in body and "utilisation" not in body["nodes"][0]
    assert body["counters"]["completed"] == 1  # the counters stay
