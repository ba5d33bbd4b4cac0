"""What the broker's memory is made of: the core's cost of each thing it keeps, measured.

    .venv/bin/python tools/memory.py [--count 20000] [--args-bytes 8] [--json]

Drives the broker's sans-IO core (broker.core.Scheduler, defaults as `zbroker start`) in this
process with tracemalloc on, and reports the bytes each kind of entry costs: a pending task
(queued), a kept answer (a finished task's TASK_COMPLETED with its spec, kept for resends), a
task that failed for good (its kept answer and its dead letter) and a registered node. Task
ids are 32 hex characters, as the clients make them; arguments are --args-bytes long, results
two bytes, each its own object as decoded frames are. What the core holds is what grows with
load; the shell adds per connection what libzmq buffers (tens of KiB per node) and SQLite
its page cache (at most 16 MiB), neither of which tracemalloc sees.

The bounds that keep each kind finite are printed beside it: the kept answers by time
(--keep-results), count and bytes; the dead letters by count (--max-dead-letters) and bytes;
pending tasks by the per-client limit (--max-pending-per-client).
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
import uuid
from collections.abc import Callable

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Received, Sent
from broker.core.scheduler import Scheduler

CLIENT = b"client"
NODE = b"node"
BOUNDS = {
    "pending task": "--max-pending-per-client per client (1,000,000)",
    "kept answer": "--keep-results (300 s), 100,000 answers, 64 MiB",
    "failed task": "its answer as above; its dead letter: --max-dead-letters, 64 MiB",
    "registered node": "one per node process",
}


def _core(capacity: int) -> Scheduler:
    core = Scheduler(SchedulerConfig(heartbeat_interval=3600.0))
    _send(core, NODE, p.Register("node", "host", 1, ("f",), capacity))
    return core


def _send(core: Scheduler, peer: bytes, message: p.Message) -> None:
    core.handle(Received(peer, message), 0.0)
    if core.deferred:
        core.handle(Sent(), 0.0)


def _execute(core: Scheduler, args_bytes: int) -> str:
    """Submit a task with arguments of its own, as each decoded EXECUTE has."""
    task_id = uuid.uuid4().hex
    args = b"[" + b"1" * max(0, args_bytes - 2) + b"]"
    _send(core, CLIENT, p.Execute(p.TaskSpec(task_id, "f", args)))
    return task_id


def _queue(core: Scheduler, args_bytes: int) -> None:
    _execute(core, args_bytes)


def _measure(
    count: int, build: Callable[[], Scheduler], step: Callable[[Scheduler], None]
) -> float:
    """Bytes one `step` leaves held in a core `build` made, averaged over `count` steps."""
    core = build()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(count):
        step(core)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    del core
    return held / count


def measure(count: int, args_bytes: int) -> dict[str, float]:
    def answered(exit_code: int) -> Callable[[Scheduler], None]:
        def step(core: Scheduler) -> None:
            task_id = _execute(core, args_bytes)
            error = None if exit_code == 0 else p.ErrorInfo("ValueError", "no good")
            result = b"4" + b"2"  # a result of its own, as each decoded RESULT has
            _send(core, NODE, p.Result(task_id, exit_code, result, error, 1))

        return step

    nodes = iter(range(10**9))

    def register(core: Scheduler) -> None:
        n = next(nodes)
        _send(core, b"n%d" % n, p.Register(f"node-{n}", "host", n, ("f", "g"), 4))

    tracemalloc.start()
    try:
        return {
            # One slot busy with a task that never ends: the rest queue.
            "pending task": _measure(count, lambda: _core(1), lambda c: _queue(c, args_bytes)),
            "kept answer": _measure(count, lambda: _core(1), answered(0)),
            "failed task": _measure(count, lambda: _core(1), answered(1)),
            "registered node": _measure(count, lambda: _core(1), register),
        }
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module's docstring for details."
    )
    parser.add_argument("--count", type=int, default=20_000, help="entries of each kind")
    parser.add_argument(
        "--args-bytes", type=int, default=8, help="length of each task's JSON arguments"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--version", action="version", version="ztb tools/memory.py 1")
    options = parser.parse_args()
    if options.count < 1 or options.args_bytes < 2:
        parser.error("--count must be at least 1 and --args-bytes at least 2")
    figures = measure(options.count, options.args_bytes)
    if options.json:
        print(json.dumps({k: round(v) for k, v in figures.items()}))
        return
    print(f"the broker core's memory per entry ({options.count:,} of each, "
          f"{options.args_bytes}-byte arguments):")  # fmt: skip
    for kind, each in figures.items():
        print(f"  {kind:<16} {each:8,.0f} bytes   bounded by {BOUNDS[kind]}")


if __name__ == "__main__":
    main()
