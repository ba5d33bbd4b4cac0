"""Figures derived from STATUS_REPLY bodies (protocol.md 3.11), for the dashboard, `zbroker
top` and Prometheus: histograms summed over functions, their difference between two
snapshots, quantiles estimated from buckets (as Prometheus' `histogram_quantile`), and the
point of history one snapshot makes against an earlier one. Pure functions of the bodies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

QUANTILES = (0.5, 0.95, 0.99)
Histogram = Mapping[str, Any]  # {"counts": [...], "sum": s}, as STATUS_REPLY carries it


def summed(histograms: Iterable[Histogram]) -> list[int]:
    """Bucket counts of several histograms (of the same bounds) added up."""
    total: list[int] = []
    for histogram in histograms:
        counts = histogram["counts"]
        if not total:
            total = [0] * len(counts)
        for i, n in enumerate(counts):
            total[i] += n
    return total


def minus(later: Sequence[int], earlier: Sequence[int]) -> list[int]:
    """What was observed between two snapshots of the same histogram's counts (a broker
    restarted in between shows counts smaller than before: then `later` itself)."""
    if len(earlier) != len(later) or any(a < b for a, b in zip(later, earlier, strict=True)):
        return list(later)
    return [a - b for a, b in zip(later, earlier, strict=True)]


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float | None:
    """The `q` quantile (0..1) of what `counts` (per bucket of `bounds`, plus one above the
    last) observed, interpolated linearly within its bucket; None when nothing was. A
    quantile in the bucket above the last bound is given as that bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


def latency_counts(body: Mapping[str, Any], kind: str = "end_to_end") -> list[int]:
    """The bucket counts of one kind of histogram (`queue_wait`, `run_time`, `end_to_end`)
    summed over functions."""
    functions = body.get("metrics", {}).get("functions", {})
    return summed(f[kind] for f in functions.values() if kind in f)


def point(body: Mapping[str, Any], earlier: Mapping[str, Any] | None, at: float) -> dict[str, Any]:
    """One point of history at Unix time `at`: throughput (the broker's own, over its last
    second), end-to-end latency quantiles (in milliseconds) of the tasks answered since
    `earlier` (None: since the start), queue depth in all and by priority, tasks running,
    and the nodes' busy and total slots."""
    metrics = body.get("metrics", {})
    bounds = metrics.get("histogram_bounds", [])
    counts = latency_counts(body)
    if earlier is not None:
        counts = minus(counts, latency_counts(earlier))
    latency = {
        f"p{round(q * 100)}": _ms(quantile(q, counts, bounds)) if bounds else None
        for q in QUANTILES
    }
    nodes = body.get("nodes", [])
    return {
        "at": at,
        "throughput": metrics.get("throughput_last_second", 0.0),
        **latency,
        "queued": body.get("queued", 0),
        "queued_by_priority": body.get("queued_by_priority", {}),
        "running": body.get("running", 0),
        # Over every node: the list holds the busiest only when there are many (a broker
        # that predates the totals lists them all).
        "nodes": body.get("nodes_total", len(nodes)),
        "busy_slots": body.get("slots_busy", sum(n.get("busy", 0) for n in nodes)),
        "slots": body.get("slots_total", sum(n.get("capacity", 0) for n in nodes)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
