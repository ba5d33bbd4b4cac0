"""Benchmark of the durable store: how many tasks per second `Store.apply` records.

    .venv/bin/python tools/bench_store.py [--tasks 100000] [--batches 64 256] [--runs 5]
                                          [--payload 16] [--durable-sync] [--dir DIR]

The broker's pattern: per task an Accepted, then a Finished with a small result payload.
  * pipelined: each apply() holds the Accepted of `batch` new tasks and the Finished of the
    previous `batch` (accepted in one pass of the server's loop, answered in a later one);
  * same batch: each apply() accepts and finishes the same `batch` tasks (they cancel out);
  * load: Store.load() of a store holding 10,000 pending tasks and the kept answers.
Kept answers are pruned to the newest 100,000 every 10,000 tasks, as the server would.
It prints wall-clock rates (what the broker's thread pays, disk waits included) and the CPU
time per task (steadier on a busy machine).
Each run uses a fresh store file; medians over --runs. The broker's own pipelined figure is
~20,000 tasks/s; the store costs it 1/rate seconds per task on the server's thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from broker.journal import Accepted, Change, Finished, StoredTask
from broker.protocol import TaskCompleted
from broker.store import Store

BROKER_RATE = 20_000.0  # tasks/s, pipelined, memory only (README)
OFFSET = time.time() - time.monotonic()


def accepted(n: int, payload: bytes) -> Accepted:
    task = StoredTask(f"task-{n}", "noop", payload, 5, n, 3, None, 0, float(n), None)
    return Accepted(task)


def finished(n: int, payload: bytes) -> Finished:
    return Finished(TaskCompleted(f"task-{n}", 0, payload, None, 1), float(n))


def pipelined(tasks: int, batch: int, payload: bytes) -> Iterator[list[Change]]:
    for start in range(0, tasks + batch, batch):
        new = [accepted(n, payload) for n in range(start, min(start + batch, tasks))]
        done = [finished(n, payload) for n in range(max(start - batch, 0), min(start, tasks))]
        yield [*new, *done]


def same_batch(tasks: int, batch: int, payload: bytes) -> Iterator[list[Change]]:
    for start in range(0, tasks, batch):
        numbers = range(start, min(start + batch, tasks))
        yield [*(accepted(n, payload) for n in numbers), *(finished(n, payload) for n in numbers)]


Pattern = Callable[[int, int, bytes], Iterator[list[Change]]]


def run(path: Path, pattern: Pattern, args: argparse.Namespace, batch: int) -> tuple[float, float]:
    """(tasks/s, CPU seconds per task) of apply() and the pruning alone: the changes are built
    beforehand. CPU time leaves out waits for the disk and for other processes."""
    batches = list(pattern(args.tasks, batch, b"[%s]" % (b"1" * max(args.payload - 2, 0))))
    store = Store.open(path, durable_sync=args.durable_sync)
    try:
        elapsed = cpu = 0.0
        for n, changes in enumerate(batches):
            started, started_cpu = time.perf_counter(), time.thread_time()
            store.apply(changes, OFFSET)
            if n % (10_000 // batch) == 0:
                store.prune_results(0.0, OFFSET, keep=100_000)
            elapsed += time.perf_counter() - started
            cpu += time.thread_time() - started_cpu
    finally:
        store.close()
    return args.tasks / elapsed, cpu / args.tasks


def time_load(path: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """Seconds to load a store with 10,000 pending tasks after `--tasks` answered ones."""
    payload = b"[%s]" % (b"1" * max(args.payload - 2, 0))
    store = Store.open(path)
    try:
        for changes in pipelined(args.tasks, 256, payload):
            store.apply(changes, OFFSET)
        pending = range(args.tasks, args.tasks + 10_000)
        store.apply([accepted(n, payload) for n in pending], OFFSET)
        started = time.perf_counter()
        snapshot = store.load(OFFSET, time.monotonic())
        return time.perf_counter() - started, len(snapshot.tasks), len(snapshot.results)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per run")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="tasks/apply")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--payload", type=int, default=16, help="bytes of arguments and result")
    parser.add_argument("--durable-sync", action="store_true", help="synchronous=FULL")
    parser.add_argument("--dir", type=Path, default=None, help="where the store files go")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, pattern in (("pipelined", pipelined), ("same batch", same_batch)):
            for batch in args.batches:
                runs = [
                    run(Path(tmp) / f"{name[0]}{batch}-{n}.db", pattern, args, batch)
                    for n in range(args.runs)
                ]
                report(name, batch, [rate for rate, _ in runs], [cpu for _, cpu in runs])
        seconds, tasks, results = time_load(Path(tmp) / "load.db", args)
        print(f"load: {tasks:,} tasks and {results:,} answers in {seconds * 1000:.0f} ms")


def report(name: str, batch: int, rates: list[float], cpus: list[float]) -> None:
    rate, cpu = statistics.median(rates), statistics.median(cpus)
    broker = 1 / (1 / BROKER_RATE + 1 / rate)  # both on the server's one thread
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{name:>10}, {batch:>3} tasks/apply: {rate:>8,.0f} tasks/s median, "
        f"{1e6 / rate:.1f} us/task ({cpu * 1e6:.1f} us CPU); a {BROKER_RATE:,.0f}/s broker "
        f"would do ~{broker:,.0f}/s ({broker / BROKER_RATE - 1:+.0%}). Runs: {runs}"
    )


if __name__ == "__main__":
    main()
