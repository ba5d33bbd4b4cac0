"""What the broker shows of itself: the STATUS_REPLY body (protocol.md 3.11), and the
sampling that keeps a flood of bad input from becoming a flood of log lines.

Pure: reads the scheduler's parts, changes nothing, reads no clock (`now` comes in).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.core.config import SchedulerConfig
from broker.core.deadletters import DeadLetters
from broker.core.nodes import Node, NodePool
from broker.core.queues import TaskQueue
from broker.core.results import ResultCache
from broker.core.tasks import RUNNING, WAITING_RETRY, TaskTable


def status_body(
    pool: NodePool,
    tasks: TaskTable,
    queue: TaskQueue,
    results: ResultCache,
    dead: DeadLetters,
    config: SchedulerConfig,
    accepting: bool,
    counters: Mapping[str, int],
    now: float,
) -> dict[str, Any]:
    return {
        "nodes": [_node_view(node, now) for node in pool.nodes.values()],
        "queued": len(queue),
        "waiting_retry": tasks.count(WAITING_RETRY),
        "running": tasks.count(RUNNING),
        "queued_by_function": queue.counts(),
        "results_kept": len(results),
        "results_bytes": results.bytes,
        "dead_letters": len(dead),
        "accepting": accepting,
        "strategy": pool.strategy,
        "heartbeat_interval": config.heartbeat_interval,
        "liveness": config.liveness,
        "counters": dict(counters),
    }


def _node_view(node: Node, now: float) -> dict[str, Any]:
    return {
        "id": node.node_id,
        "name": node.name,
        "host": node.host,
        "pid": node.pid,
        "functions": sorted(node.functions),
        "capacity": node.capacity,
        "active": len(node.active),
        "completed": node.completed,
        "last_seen": round(max(0.0, now - node.last_seen), 3),
        "state": "draining" if node.draining else "ready",
    }


def sampled(count: int) -> bool:
    """Whether the `count`-th occurrence of something is logged: the first ten, then every
    power of ten, so that a flood of bad input does not become a flood of log lines."""
    return count <= 10 or str(count).rstrip("0") == "1"
