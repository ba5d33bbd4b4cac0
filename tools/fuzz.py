"""Hostile input against a live broker over real sockets, while valid traffic is checked.

    .venv/bin/python tools/fuzz.py [--messages 20000] [--flood 50000] [--seconds 60] [--json]

Starts `zbroker start` (1 MiB message limit) and one `znode --functions util` on loopback.
A checker thread keeps running `echo` tasks through the Python client and verifies every
answer. Meanwhile the fuzzer sends, from many DEALER peers, random multipart messages,
truncated and oversized ones, wrong versions, unknown commands, valid headers with garbage
bodies, and then one peer floods without ever reading. At the end it reports whether the
broker stayed up, the valid tasks (all must be right), the broker's refusal counters and its
memory (VmRSS) before and after; exit status 1 if the broker died or a valid task failed.
Bounded in messages and in time; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import zmq
from cluster import Cluster  # type: ignore[import-not-found]

from broker import protocol as p
from broker.control import status
from client import Client

LIMIT = 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def hostile(rng: random.Random) -> list[bytes]:
    """One message a broken or malicious peer might send (after its DEALER delimiter)."""
    garbage = rng.randbytes(rng.randint(0, 64))
    header = orjson.dumps({"task_id": f"f{rng.random()}", "function": "echo"})
    choices = [
        [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 8))],
        [b"", p.TAG, rng.choice([p.EXECUTE, p.RESULT, p.REGISTER, p.RUN, b"NOPE"]), garbage],
        [b"", b"ZTB" + str(rng.randint(2, 99)).encode(), p.EXECUTE, header, b"[1]"],
        [b"", p.TAG],
        [b"", p.TAG, p.EXECUTE, header],  # truncated: no arguments frame
        [b"", p.TAG, p.EXECUTE, header, garbage],  # valid header, garbage arguments
        [b"", p.TAG, p.RESULT, orjson.dumps({"task_id": "x", "exit_code": 999}), b"1"],
        [b"", p.TAG, p.HEARTBEAT],
    ]
    if rng.random() < 0.01:
        return [b"", p.TAG, p.EXECUTE, header, b"[" + b"1," * (LIMIT // 2) + b"1]"]
    return rng.choice(choices)


class Checker(threading.Thread):
    """Valid work alongside the fuzzing: every answer must be right."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.ok, self.wrong = url, 0, []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.url, timeout=10) as client:
            while not self.stop.is_set():
                value = {"n": self.ok, "big": 2**70 + self.ok}
                try:
                    answer = client.execute("echo", value)
                except Exception as exc:  # any failure of valid work is a finding
                    self.wrong.append(repr(exc))
                    continue
                if answer == value:
                    self.ok += 1
                else:
                    self.wrong.append(f"echo({value}) returned {answer}")


def fuzz(url: str, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    context = zmq.Context.instance()
    peers = [context.socket(zmq.DEALER) for _ in range(16)]
    for peer in peers:
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(url)
    deadline = time.monotonic() + args.seconds
    sent = 0
    while sent < args.messages and time.monotonic() < deadline:
        rng.choice(peers).send_multipart(hostile(rng))
        sent += 1
        for peer in peers:  # read (and drop) answers so these peers are not the flood
            while peer.poll(0):
                peer.recv_multipart()
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)
    flooder.connect(url)
    for i in range(args.flood):
        if time.monotonic() > deadline:
            break
        flooder.send_multipart([b"", p.TAG, b"NOPE", str(i).encode()])
        sent += 1
    settle(url)
    for sock in [*peers, flooder]:
        sock.close(linger=0)
    return sent


def settle(url: str, timeout: float = 30.0) -> None:
    """Wait until the broker has worked through the hostile messages: the counters of
    refusals stop moving (the checker's valid tasks keep the others moving)."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] | None = None
    while time.monotonic() < deadline:
        counters = {
            name: value
            for name, value in status(url, timeout=5)["counters"].items()
            if name.startswith("refused_") or name in ("heartbeats_unknown", "send_blocked")
        }
        if counters == last:
            return
        last = counters
        time.sleep(0.2)  # between two reads of the counters
    raise SystemExit(f"error: the broker was still busy after {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="hostile messages")
    parser.add_argument(
        "--flood", type=int, default=50_000, help="messages from a peer that never reads"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound for sending")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ztb-fuzz-") as tmp:
        cluster = Cluster(
            Path(tmp),
            nodes=1,
            node_args=["--concurrency", "1"],
            broker_args=["--max-message-size", str(LIMIT)],
        )
        with cluster as url:
            broker_pid = cluster.procs[0].pid
            rss_before = rss_kib(broker_pid)
            checker = Checker(url)
            checker.start()
            sent = fuzz(url, args)
            checker.stop.set()
            checker.join(15)
            alive = cluster.procs[0].poll() is None
            report: dict[str, Any] = {
                "hostile_messages_sent": sent,
                "broker_alive": alive,
                "valid_tasks_ok": checker.ok,
                "valid_tasks_wrong": checker.wrong[:10],
                "broker_rss_kib_before": rss_before,
                "broker_rss_kib_after": rss_kib(broker_pid) if alive else None,
                "counters": status(url, timeout=5)["counters"] if alive else {},
            }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json else report)
    sys.exit(0 if alive and not checker.wrong and checker.ok > 0 else 1)


if __name__ == "__main__":
    main()
