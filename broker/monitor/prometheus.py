"""The broker's figures in Prometheus' text format, through prometheus-client.

A custom collector turns the watch's latest STATUS_REPLY body into metric families at each
scrape (prometheus-client's way for figures kept elsewhere: nothing is counted twice, and a
scrape never asks the broker itself). Names follow Prometheus' conventions: the `ztb_`
prefix, `_total` for counters, base units (`_seconds`, `_bytes`), `_ratio` for a share, and
labels for function, outcome, priority and node. The list is in README's "Monitoring".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker.core.metrics import OUTCOMES
from broker.monitor.watch import Watch

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The functions' histograms: STATUS_REPLY key, metric name, help.
HISTOGRAMS = (
    ("queue_wait", "ztb_task_queue_wait_seconds", "From acceptance to the first start."),
    ("run_time", "ztb_task_run_seconds", "From an attempt's start to its RESULT."),
    ("end_to_end", "ztb_task_end_to_end_seconds", "From acceptance to the answer."),
)
# The functions' counts: STATUS_REPLY key, metric name, help.
FUNCTION_COUNTS = (
    ("accepted", "ztb_tasks_accepted_total", "Tasks accepted."),
    ("started", "ztb_task_attempts_started_total", "Attempts started on a node's slot."),
    ("retried", "ztb_task_attempts_retried_total", "Failed attempts followed by another."),
    ("dead_lettered", "ztb_tasks_dead_lettered_total", "Tasks put in the dead-letter queue."),
)
TASK_GAUGES = (
    ("queued", "ztb_tasks_queued", "Tasks waiting for a slot."),
    ("running", "ztb_tasks_running", "Tasks started on a node, not answered yet."),
    ("held", "ztb_tasks_held", "Tasks held unstarted by their nodes (prefetch)."),
    ("waiting_retry", "ztb_tasks_waiting_retry", "Failed tasks waiting for their next attempt."),
    ("waiting_dependencies", "ztb_tasks_waiting_dependencies", "Tasks waiting for others."),
    ("results_kept", "ztb_results_kept", "Answers kept for resends."),
    ("results_bytes", "ztb_results_kept_bytes", "Bytes of the answers kept."),
    ("dead_letters", "ztb_dead_letters", "Tasks in the dead-letter queue."),
)
IO_COUNTS = (
    ("messages_in", "ztb_messages_received_total", "Messages received."),
    ("messages_out", "ztb_messages_sent_total", "Messages sent."),
    ("bytes_in", "ztb_received_bytes_total", "Bytes received (from the tag frame on)."),
    ("bytes_out", "ztb_sent_bytes_total", "Bytes sent (from the tag frame on)."),
)


class StatusCollector(Collector):
    def __init__(self, watch: Watch) -> None:
        self._watch = watch

    def collect(self) -> Iterator[Metric]:
        snapshot = self._watch.latest()
        up = GaugeMetricFamily("ztb_up", "1 if the broker answered the last STATUS, else 0.")
        up.add_metric([], 0.0 if snapshot.error is not None else 1.0)
        yield up
        if snapshot.status is None or snapshot.error is not None:
            return
        yield from families(snapshot.status)


def families(body: Mapping[str, Any]) -> Iterator[Metric]:
    """Every metric family of one STATUS_REPLY body."""
    yield from _tasks(body)
    yield from _nodes(body.get("nodes", []), body.get("nodes_total"))
    metrics = body.get("metrics")
    if metrics is not None:
        yield from _functions(metrics)
        yield from _io(metrics)
    yield from _counters(body.get("counters", {}))


def _tasks(body: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, text in TASK_GAUGES:
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], float(body.get(key, 0)))
        yield gauge
    by_priority = GaugeMetricFamily(
        "ztb_tasks_queued_by_priority",
        "Tasks waiting for a slot, by priority.",
        labels=["priority"],
    )
    for priority, n in sorted(body.get("queued_by_priority", {}).items()):
        by_priority.add_metric([priority], float(n))
    yield by_priority
    by_function = GaugeMetricFamily(
        "ztb_tasks_queued_by_function",
        "Tasks waiting for a slot, by function.",
        labels=["function"],
    )
    for function, n in sorted(body.get("queued_by_function", {}).items()):
        by_function.add_metric([function], float(n))
    yield by_function


def _nodes(nodes: Sequence[Mapping[str, Any]], total: Any) -> Iterator[Metric]:
    """The count of every node; the figures of those STATUS lists (the 50 busiest when
    there are more: a series per node of thousands would be a cost of its own)."""
    labels = ["node", "name", "host"]
    count = GaugeMetricFamily("ztb_nodes", "Registered nodes (node processes).")
    count.add_metric([], float(total if isinstance(total, int) else len(nodes)))
    yield count
    specs: list[tuple[str, str, str, type[GaugeMetricFamily | CounterMetricFamily]]] = [
        ("capacity", "ztb_node_slots", "Slots of the node.", GaugeMetricFamily),
        ("busy", "ztb_node_busy_slots", "Slots running a task.", GaugeMetricFamily),
        (
            "utilisation",
            "ztb_node_utilisation_ratio",
            "Busy share, last minute.",
            GaugeMetricFamily,
        ),
        ("completed", "ztb_node_results", "RESULTs accepted from the node.", CounterMetricFamily),
        ("failed", "ztb_node_failures", "RESULTs with an exit code but 0.", CounterMetricFamily),
        (
            "busy_seconds",
            "ztb_node_busy_seconds",
            "Slot-seconds spent running.",
            CounterMetricFamily,
        ),
    ]
    for key, name, text, kind in specs:
        family = kind(name, text, labels=labels)
        for node in nodes:
            if key in node:
                family.add_metric([node["id"], node["name"], node["host"]], float(node[key]))
        yield family


def _functions(metrics: Mapping[str, Any]) -> Iterator[Metric]:
    functions: Mapping[str, Mapping[str, Any]] = metrics.get("functions", {})
    for key, name, text in FUNCTION_COUNTS:
        family = CounterMetricFamily(name, text, labels=["function"])
        for function, figures in sorted(functions.items()):
            family.add_metric([function], float(figures.get(key, 0)))
        yield family
    answered = CounterMetricFamily(
        "ztb_tasks_answered_total", "Tasks answered, by outcome.", labels=["function", "outcome"]
    )
    for function, figures in sorted(functions.items()):
        for outcome in OUTCOMES:
            answered.add_metric([function, outcome], float(figures.get(outcome, 0)))
    yield answered
    bounds = metrics.get("histogram_bounds", [])
    for key, name, text in HISTOGRAMS:
        histograms = HistogramMetricFamily(name, text, labels=["function"])
        for function, figures in sorted(functions.items()):
            histogram = figures.get(key)
            if histogram is not None:
                buckets = _buckets(bounds, histogram["counts"])
                histograms.add_metric([function], buckets, float(histogram["sum"]))
        yield histograms
    for window, key in (("1s", "throughput_last_second"), ("1m", "throughput_last_minute")):
        gauge = GaugeMetricFamily(
            f"ztb_throughput_{window}_tasks_per_second",
            f"Tasks answered per second, last {window}.",
        )
        gauge.add_metric([], float(metrics.get(key, 0.0)))
        yield gauge
    uptime = GaugeMetricFamily("ztb_uptime_seconds", "Seconds since the broker started.")
    uptime.add_metric([], float(metrics.get("uptime", 0.0)))
    yield uptime


def _io(metrics: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, text in IO_COUNTS:
        family = CounterMetricFamily(name, text)
        family.add_metric([], float(metrics.get(key, 0)))
        yield family
    store = metrics.get("store")
    if store is None:
        return
    commits = CounterMetricFamily("ztb_store_commits_total", "Group commits of the store.")
    commits.add_metric([], float(store["batches"]))
    yield commits
    changes = CounterMetricFamily("ztb_store_changes_total", "Changes the commits wrote.")
    changes.add_metric([], float(store["changes"]))
    yield changes
    largest = GaugeMetricFamily("ztb_store_largest_batch", "Most changes in one commit.")
    largest.add_metric([], float(store["largest_batch"]))
    yield largest
    histogram = store["commit_seconds"]
    commit = HistogramMetricFamily("ztb_store_commit_seconds", "Time one group commit took.")
    commit.add_metric(
        [], _buckets(metrics["histogram_bounds"], histogram["counts"]), histogram["sum"]
    )
    yield commit


def _counters(counters: Mapping[str, int]) -> Iterator[Metric]:
    refused = CounterMetricFamily(
        "ztb_refused_messages_total", "Messages refused, by reason.", labels=["reason"]
    )
    events = CounterMetricFamily(
        "ztb_events_total", "The broker's counters (protocol.md 3.11), by name.", labels=["event"]
    )
    for name, count in sorted(counters.items()):
        if name.startswith("refused_"):
            refused.add_metric([name.removeprefix("refused_")], float(count))
        events.add_metric([name], float(count))
    yield refused
    yield events


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative `le` buckets, ending with +Inf, from per-bucket counts."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip([*bounds, float("inf")], counts, strict=False):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
    return buckets


def exposition(watch: Watch) -> bytes:
    """The text a scrape of /metrics gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(watch))
    return generate_latest(registry)
