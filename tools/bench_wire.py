"""Cost of moving one ZTB message through pyzmq: its Python wrappers against broker.wire.

    .venv/bin/python tools/bench_wire.py [--messages 100000] [--runs 5]

Sends a 4-frame EXECUTE-sized message over an inproc PAIR and receives it, --messages times,
each way of doing it in turn, --runs times; prints the median microseconds per message. In
process and hot in cache, so it shows the wrappers' cost, not what a message costs between
processes (tools/bench.py measures that).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import zmq

from broker.wire import NOBLOCK, recv_frames, send_frames

FRAMES = [
    b"ZTB1",
    b"EXECUTE",
    b'{"task_id":"5664b89db55843a1817c9e10e9f6a667","function":"noop"}',
    b"[]",
]


def ways(a: zmq.Socket[Any], b: zmq.Socket[Any]) -> dict[str, Callable[[], object]]:
    more = int(zmq.SNDMORE)

    def multipart() -> object:
        a.send_multipart(FRAMES, zmq.NOBLOCK)
        return b.recv_multipart(zmq.NOBLOCK)

    def frame_by_frame() -> object:
        for frame in FRAMES[:-1]:
            a.send(frame, more)
        a.send(FRAMES[-1])
        frames = [b.recv()]
        while b.getsockopt(zmq.RCVMORE):
            frames.append(b.recv())
        return frames

    def wire() -> object:
        send_frames(a, FRAMES, NOBLOCK)
        return recv_frames(b, NOBLOCK)

    return {
        "send_multipart + recv_multipart": multipart,
        "send/recv + getsockopt(RCVMORE)": frame_by_frame,
        "broker.wire send_frames + recv_frames": wire,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported")
    args = parser.parse_args()
    context: zmq.Context[Any] = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://bench-wire")
    b.connect("inproc://bench-wire")
    timings: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, move in ways(a, b).items():
            started = time.perf_counter()
            for _ in range(args.messages):
                move()
            elapsed = time.perf_counter() - started
            timings.setdefault(name, []).append(elapsed / args.messages * 1e6)
    for name, runs in timings.items():
        print(f"{name:40} {statistics.median(runs):5.2f} us per message (median of {args.runs})")
    context.destroy(linger=0)


if __name__ == "__main__":
    main()
