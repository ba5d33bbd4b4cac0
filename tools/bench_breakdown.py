"""Where a sequential round trip goes: our stack against a bare relay, and CPU per process.

    .venv/bin/python tools/bench_breakdown.py [--calls 2000] [--runs 5] [--store]

Alternates, --runs times, --calls sequential round trips through
  * relay: a ROUTER that only passes frames between a REQ client and one DEALER echo worker
    (all three using broker.wire), with an EXECUTE-sized 4-frame message;
  * ours: `Client.execute("noop")` through `zbroker start` and one `znode --concurrency 1`
    (`--store none` unless --store);
and reports the median p50, then the CPU each process's threads spent per round trip
(from /proc, over the last run), so that the cost above the relay can be placed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from cluster import Cluster  # type: ignore[import-not-found]

from broker.wire import NOBLOCK, readable, recv_frames, send_frames, send_routed, wait_readable
from client import Client

MESSAGE = [b"ZTB1", b"EXECUTE", b'{"task_id":"5664b89db55843a1817c9e10e9f6a667"}', b"[]"]
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def relay(url: str) -> None:
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(url)
    worker = recv_frames(router)[0]
    while True:
        wait_readable(router, -1)
        while readable(router):
            frames = recv_frames(router, NOBLOCK)
            if frames[0] == worker:
                send_routed(router, frames[2], frames[4:], NOBLOCK)
            else:
                send_routed(router, worker, frames, NOBLOCK)


def echo(url: str) -> None:
    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(url)
    send_frames(dealer, [b"ready"])
    while True:
        send_frames(dealer, recv_frames(dealer))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU microseconds (user + system) per thread of `pid`, by thread name and id."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{name}[{tid}]"] = (int(fields[11]) + int(fields[12])) * TICK_US
    return out


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def timed(calls: int, round_trip: Any, pids: dict[str, int]) -> tuple[float, dict[str, Any]]:
    """p50 in microseconds, and CPU per round trip per process thread."""
    before = {name: thread_cpu(pid) for name, pid in pids.items()}
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - started)
    after = {name: thread_cpu(pid) for name, pid in pids.items()}
    cpu = {
        name: {t: (v - before[name].get(t, 0.0)) / calls for t, v in after[name].items()}
        for name in pids
    }
    return statistics.quantiles(samples, n=100)[49] * 1e6, cpu


def compare(args: argparse.Namespace, relay_trip: Any, relay_pids: dict[str, int]) -> None:
    """Alternate the relay and our stack; print the medians and the last run's CPU."""
    broker_args = [] if args.store else ["--store", "none"]
    p50s: dict[str, list[float]] = {"relay": [], "ours": []}
    cpu: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ztb-breakdown-") as tmp:
        cluster = Cluster(Path(tmp), 1, ["--concurrency", "1"], broker_args)
        with cluster as broker_url, Client(broker_url) as client:
            ours_pids = {"broker": cluster.procs[0].pid, "client": os.getpid()}
            for i, pid in enumerate(children(cluster.procs[1].pid)):  # serving and spare
                ours_pids[f"node-{i + 1}"] = pid
            for _ in range(200):  # warm up both
                relay_trip()
                client.execute("noop")
            for run in range(args.runs):
                p50, cpu["relay"] = timed(args.calls, relay_trip, relay_pids)
                p50s["relay"].append(p50)
                p50, cpu["ours"] = timed(args.calls, lambda: client.execute("noop"), ours_pids)
                p50s["ours"].append(p50)
                relay_p50 = p50s["relay"][-1]
                progress = f"run {run + 1}/{args.runs}: relay {relay_p50:.0f} us, ours {p50:.0f} us"
                print(progress, file=sys.stderr)
    report(p50s, cpu)


def report(p50s: dict[str, list[float]], cpu: dict[str, dict[str, Any]]) -> None:
    for name, runs in p50s.items():
        listed = ", ".join(f"{r:.0f}" for r in runs)
        print(
            f"{name}: p50 {statistics.median(runs):.0f} us (median of {len(runs)} runs: {listed})"
        )
    print("CPU per round trip in the last run (us, user + system), threads above 1 us:")
    for stack, processes in cpu.items():
        for process, threads in processes.items():
            for thread, us in threads.items():
                if us >= 1:
                    print(f"  {stack:5} {process:7} {thread:28} {us:6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="round trips per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")
    parser.add_argument("--store", action="store_true", help="run the broker with its store")
    args = parser.parse_args()
    url = "tcp://127.0.0.1:" + str(_free_port())
    helpers = [multiprocessing.Process(target=f, args=(url,), daemon=True) for f in (relay, echo)]
    for helper in helpers:
        helper.start()
    context: zmq.Context[Any] = zmq.Context()
    req = context.socket(zmq.REQ)
    req.connect(url)

    def relay_trip() -> None:
        send_frames(req, MESSAGE)
        recv_frames(req)

    try:
        relay_pids = {"relay": helpers[0].pid or 0, "echo": helpers[1].pid or 0}
        compare(args, relay_trip, {**relay_pids, "client": os.getpid()})
    finally:
        for helper in helpers:
            helper.kill()
        context.destroy(linger=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
