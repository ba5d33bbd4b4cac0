"""What the broker shows of itself: the STATUS_REPLY body (protocol.md 3.11).

Pure: reads the scheduler's state, changes nothing, reads no clock (`now` comes in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.workers import NodeRecord

if TYPE_CHECKING:
    from broker.scheduler import Scheduler


def status_body(scheduler: Scheduler, now: float) -> dict[str, Any]:
    pool = scheduler.pool
    nodes = [_node_view(n, now) for n in pool.nodes.values()]
    running = sum(len(n.active) for n in pool.nodes.values())
    return {
        "nodes": nodes,
        "queued": len(scheduler.queue),
        "waiting_retry": len(scheduler.retry_timers),
        "running": running,
        "queued_by_function": scheduler.queue.counts(),
        "results_kept": len(scheduler.results),
        "results_bytes": scheduler.results.bytes,
        "dead_letters": len(scheduler.dead),
        "accepting": scheduler.accepting,
        "strategy": pool.strategy,
        "heartbeat_interval": scheduler.config.heartbeat_interval,
        "liveness": scheduler.config.liveness,
        "counters": dict(scheduler.counters),
    }


def _node_view(node: NodeRecord, now: float) -> dict[str, Any]:
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
