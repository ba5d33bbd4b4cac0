"""Figures the dashboard, `zbroker top` and /metrics derive from STATUS_REPLY bodies."""

from __future__ import annotations

import pytest

from broker.core.metrics import BOUNDS, Histogram
from broker.monitor.derive import minus, point, quantile, summed


def counts_of(*seconds: float) -> list[int]:
    histogram = Histogram()
    for value in seconds:
        histogram.observe(value)
    return histogram.counts


def test_quantiles_interpolate_within_their_bucket() -> None:
    counts = counts_of(*[0.2] * 100)  # all in the bucket (0.1, 0.25]
    assert quantile(0.5, counts, BOUNDS) == pytest.approx(0.1 + 0.15 * 0.5)
    assert quantile(1.0, counts, BOUNDS) == pytest.approx(0.25)
    assert quantile(0.5, [0] * len(counts), BOUNDS) is None
    assert quantile(0.99, counts_of(1e6), BOUNDS) == BOUNDS[-1]  # above the last bound


def test_a_quantile_falls_in_the_bucket_that_holds_its_rank() -> None:
    counts = counts_of(*([0.0004] * 90 + [2.0] * 10))
    assert quantile(0.5, counts, BOUNDS) is not None
    assert quantile(0.5, counts, BOUNDS) <= 0.0005  # type: ignore[operator]
    assert 1.0 < quantile(0.95, counts, BOUNDS) <= 2.5  # type: ignore[operator]


def test_differences_of_counts_and_a_restarted_broker() -> None:
    assert summed([{"counts": [1, 2]}, {"counts": [3, 4]}]) == [4, 6]
    assert minus([5, 7], [1, 2]) == [4, 5]
    assert minus([1, 0], [5, 7]) == [1, 0]  # smaller than before: counted from the restart


def test_a_point_compares_two_snapshots() -> None:
    def body(latencies: list[float], queued: int) -> dict[str, object]:
        end_to_end = {"counts": counts_of(*latencies), "sum": sum(latencies)}
        return {
            "queued": queued,
            "queued_by_priority": {"5": queued},
            "running": 1,
            "nodes": [{"busy": 1, "capacity": 4}, {"busy": 0, "capacity": 2}],
            "metrics": {
                "histogram_bounds": list(BOUNDS),
                "throughput_last_second": 12.5,
                "functions": {"f": {"end_to_end": end_to_end, "succeeded": len(latencies)}},
            },
        }

    earlier = body([5.0] * 10, 3)
    later = body([5.0] * 10 + [0.002] * 10, 7)  # ten more, all fast
    p = point(later, earlier, 100.0)
    assert p["throughput"] == 12.5 and p["queued"] == 7 and p["queued_by_priority"] == {"5": 7}
    assert p["p99"] is not None and p["p99"] <= 2.5  # milliseconds: the slow ones are older
    assert (p["nodes"], p["busy_slots"], p["slots"]) == (2, 1, 6)
    assert point(later, None, 100.0)["p99"] > 1000  # since the start: the slow ones count
