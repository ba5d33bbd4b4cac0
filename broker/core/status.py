"""What the broker shows of itself: the STATUS_REPLY body (protocol.md 3.11), and the
sampling that keeps a flood of bad input from becoming a flood of log lines.

Pure: reads the scheduler's parts, changes nothing, reads no clock (`now` comes in).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from itertools import islice
from typing import Any

from broker.core.config import SchedulerConfig
from broker.core.deadletters import DeadLetters
from broker.core.nodes import Node, NodePool
from broker.core.queues import TaskQueue
from broker.core.results import ResultCache
from broker.core.tasks import TaskTable
from broker.protocol import MAX_STATUS_PAGE, NODES_ALL, NODES_BUSIEST, STATUS_NODES, Status

# Every counter STATUS_REPLY may carry, and what it counts (protocol.md 3.11 lists them).
COUNTERS = {
    "accepted": "tasks accepted: queued or started",
    "resubmitted": "EXECUTEs of a pending task id: its requester added, nothing run again",
    "answered_again": "EXECUTEs of a recently answered task id: answered with the kept answer",
    "unknown_function": "tasks answered 127: no node offers the function",
    "ignored_stopping": "EXECUTEs left unanswered while the broker stops (4.4)",
    "completed": "tasks answered with exit code 0",
    "failed": "tasks answered with another exit code (but 130)",
    "cancelled": "tasks answered 130: cancelled by a client (5.6)",
    "fetched": "FETCHes (3.19)",
    "retried": "failed attempts followed by another attempt",
    "requeued": "attempts lost with their node, run again",
    "expired": "tasks answered 125: not started within their queue timeout",
    "dead_lettered": "tasks put in the dead-letter queue",
    "replayed": "dead letters queued again",
    "purged": "dead letters forgotten",
    "restored": "pending tasks taken back from the store at start",
    "adopted": "attempts a registering node claimed and kept running, not run again (7.3)",
    "claims_refused": "attempts claimed for tasks finished or unknown here, told to stop (7.3)",
    "claims_ignored": "attempts claimed of tasks another node runs; held ones told to stop (7.3)",
    "claims_early": "attempts claimed before their task came (a resend); kept for the expiry (7.3)",
    "restored_unclaimed": "restored tasks no node claimed after a restart, placed again (7.3)",
    "late_results": "successes of attempts given up earlier, taken as the answer (7.2)",
    "stale_failures": "failures of attempts given up earlier, ignored (7.2)",
    "results_dropped": "RESULTs of tasks answered meanwhile: their slot freed, nothing else",
    "nodes_registered": "REGISTERs accepted",
    "nodes_deregistered": "DEREGISTERs",
    "nodes_expired": "nodes declared dead after interval x liveness of silence",
    "loop_stalls": (
        "stalls of the broker's loop (its timers ran 0.25 s late or more): nodes' "
        "silence during them is not counted (7.2)"
    ),
    "loop_stalled_ms": "milliseconds of those stalls",
    "nodes_crashed": "node processes replaced by their supervisor (REGISTER replaces)",
    "nodes_overdue": "nodes dropped for not stopping a task past its timeout (5.3)",
    "nodes_unreachable": "nodes dropped because a send to them failed",
    "nodes_reregistered": "REGISTERs from an identity already registered",
    "heartbeats_unknown": "HEARTBEATs from peers that are not registered",
    "errors_received": "ERRORs received (never answered)",
    "unreachable": "sends that found their peer gone",
    "send_blocked": "messages dropped: the peer reads nothing and its queue is full",
    "internal_errors": "bugs caught in the broker's loop (logged with a traceback)",
    "refused_malformed": "messages refused with ERROR malformed",
    "refused_unsupported_version": "messages refused with ERROR unsupported_version",
    "refused_unknown_command": "messages refused with ERROR unknown_command",
    "refused_too_large": "messages refused with ERROR too_large",
    "refused_not_holder": "RESULTs refused: the sender holds no attempt of that task (7.2)",
    "refused_conflict": "EXECUTEs refused: their task id is known with another request (6)",
    "refused_unknown_dependency": "EXECUTEs refused: they depend on an unknown task (5.7)",
    "refused_forbidden": "messages refused: with CURVE, the sender's key may not send them (1)",
    "refused_too_many_tasks": "EXECUTEs refused: their client had the most tasks pending",
    "dependency_failed": "tasks answered 66 (or 130) because a task they depend on failed (5.7)",
    "retracts_sent": "RETRACTs sent to take back held tasks for an idle slot elsewhere (5.5)",
    "retracted": "held tasks given back unstarted and placed again (5.5)",
    "requeued_unstarted": "held tasks of a lost node placed again (5.5)",
    "cancelled_with_parent": "tasks cancelled because the task that submitted them was (5.9)",
    "waiting": "WAITINGs that lent a waiting task's slot to another task (5.9)",
    "ignored_waiting": "WAITINGs for a task the node does not run (5.9)",
}


def listed(pool: NodePool, request: Status) -> tuple[list[Node], dict[str, Any]]:
    """The nodes a STATUS_REPLY lists (protocol.md 3.10), and the keys that say which: the
    busiest (all of them, in the order they registered, when they are few), or a page of
    all in that order. O(nodes) for the busiest (a cheap pass for those with tasks, then a
    partial sort of those), O(offset + page) for a page."""
    nodes = pool.nodes
    if request.nodes == NODES_ALL:
        limit = MAX_STATUS_PAGE if request.limit is None else request.limit
        page = list(islice(nodes.values(), request.offset, request.offset + limit))
        return page, {"nodes_listed": NODES_ALL, "nodes_offset": request.offset}
    limit = STATUS_NODES if request.limit is None else request.limit
    if len(nodes) <= limit:
        return list(nodes.values()), {"nodes_listed": NODES_BUSIEST}
    working = [node for node in nodes.values() if node.active]
    busiest = heapq.nlargest(limit, working, key=_load)
    if len(busiest) < limit:  # then idle ones, in the order they registered
        idle = (node for node in nodes.values() if not node.active)
        busiest += islice(idle, limit - len(busiest))
    return busiest, {"nodes_listed": NODES_BUSIEST}


def _load(node: Node) -> tuple[int, int]:
    return (len(node.active) - len(node.held) - len(node.retracting), len(node.active))


def by_function(
    pool: NodePool, queued: Mapping[str, int]
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Per function: the registered nodes offering it (draining ones too), their slots,
    busy slots, held tasks, completed RESULTs, and the tasks queued for it; and the totals
    over all nodes (`slots`, `busy`). From the sums the pool keeps per set of functions:
    O(sets x functions), whatever the node count."""
    functions: dict[str, dict[str, int]] = {}
    totals = {"slots": 0, "busy": 0}
    for figures in pool.function_sets.values():
        busy = figures.active - figures.held
        totals["slots"] += figures.slots
        totals["busy"] += busy
        for function in figures.functions:
            f = functions.get(function)
            if f is None:
                f = functions[function] = dict.fromkeys(_FUNCTION_KEYS, 0)
            f["nodes"] += figures.nodes
            f["slots"] += figures.slots
            f["busy"] += busy
            f["held"] += figures.held
            f["completed"] += figures.completed
    for function, count in queued.items():
        functions.setdefault(function, dict.fromkeys(_FUNCTION_KEYS, 0))["queued"] = count
    return dict(sorted(functions.items())), totals


_FUNCTION_KEYS = ("nodes", "slots", "busy", "held", "completed", "queued")


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
    nodes: list[Node],
    listing: dict[str, Any],
) -> dict[str, Any]:
    queued = queue.counts()
    functions, totals = by_function(pool, queued)
    return {
        "nodes": [_node_view(node, now) for node in nodes],
        "nodes_total": len(pool.nodes),
        **listing,
        "slots_total": totals["slots"],
        "slots_busy": totals["busy"],
        "by_function": functions,
        "queued": len(queue),
        "waiting_retry": tasks.waiting_retry,
        "running": tasks.running,
        "held": tasks.held,
        "unclaimed": tasks.unclaimed,
        # The rest of the table: QUEUED tasks are exactly the queue's (an invariant).
        "waiting_dependencies": len(tasks)
        - len(queue)
        - tasks.running
        - tasks.waiting_retry
        - tasks.held
        - tasks.unclaimed,
        "queued_by_function": queued,
        "queued_by_priority": queue.counts_by_priority(),
        "results_kept": len(results),
        "results_bytes": results.bytes,
        "dead_letters": len(dead),
        "accepting": accepting,
        "strategy": pool.strategy,
        "max_prefetch": pool.max_prefetch,
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
        "capacity": node.slots,
        "waiting": len(node.waiting),
        "prefetch": node.prefetch,
        "active": len(node.active),
        "held": len(node.held) + len(node.retracting),
        "busy": node.running,
        "completed": node.completed,
        "failed": node.failed,
        "last_seen": round(max(0.0, now - node.last_seen), 3),
        "state": "draining" if node.draining else "ready",
    }


def sampled(count: int) -> bool:
    """Whether the `count`-th occurrence of something is logged: the first ten, then every
    power of ten, so that a flood of bad input does not become a flood of log lines."""
    return count <= 10 or str(count).rstrip("0") == "1"
