"""Hostile input against a live broker over real sockets, while valid traffic is checked.

    .venv/bin/python tools/fuzz.py [--messages 20000] [--flood 50000] [--seconds 60] [--json]

Starts `zbroker start` (1 MiB message limit) and one `znode --functions util --functions
math` through client.cluster.LocalCluster. A checker thread keeps running tasks through the
Python client, each under an id of its own, alternating `echo` (answered at once) and
`sleep` (running for a while), and verifies every answer. Meanwhile the fuzzer sends, from
many DEALER peers, random multipart messages, truncated and oversized ones, wrong versions,
unknown commands, valid headers with garbage bodies, and forged RESULTs: for the task the
checker waits for (most often running on the real node), from unregistered peers and from a
peer registered as a node that holds no attempt of it. The broker must refuse every forged
RESULT (ERROR not_holder to the registered forger, counter `refused_not_holder`) and the task
must still get its right answer. Then one peer floods without ever reading.

At the end it reports whether the broker stayed up, the valid tasks (all must be right), the
forged RESULTs and their refusals, the broker's refusal counters and its memory (VmRSS)
before and after; exit status 1 if the broker died, a valid task failed or was answered
wrong, or a forged RESULT went unrefused. Bounded in messages and in time; traffic only to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import zmq

from broker import protocol as p
from client import Client
from client.cluster import LocalCluster

LIMIT = 1024 * 1024
SLEEP = 0.05  # seconds each checker `sleep` task runs: long enough to be forged against
FORGE_SHARE = 0.05  # of the hostile messages, forged RESULTs from the registered forger
FORGED = b'"forged"'  # the result a forged RESULT claims; no valid task returns it


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def forged_result(rng: random.Random, task_id: str) -> list[bytes]:
    """A RESULT for `task_id` claiming a success or a failure (after the DEALER delimiter)."""
    if rng.random() < 0.5:
        frames = p.result_frames(task_id, 0, FORGED, None, rng.choice([1, None]))
    else:
        error = p.ErrorInfo("Forged", "a peer that does not hold the task says it failed")
        frames = p.result_frames(task_id, p.EXIT_FUNCTION_ERROR, b"null", error, 1)
    return [b"", *frames]


def hostile(rng: random.Random, waited_for: str | None) -> list[bytes]:
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
        # Packed (protocol.md 2.5): sizes that do not cut the payloads, a bad header among
        # good ones, headers that are no array.
        [b"", p.TAG, p.EXECUTE, b"[" + header + b"]", b"[%d]" % rng.randint(0, 99), garbage],
        [b"", p.TAG, p.EXECUTE, b"[" + header + b",7," + header + b"]", b"[3,0,0]", b"[1]"],
        [b"", p.TAG, p.RESULT, b"[" + garbage.hex().encode(), b"[]", garbage],
        [b"", p.TAG, p.EXECUTE, b"[]", b"[]", b""],
    ]
    if waited_for is not None:  # forged by a peer that is not even registered
        choices.append(forged_result(rng, waited_for))
    if rng.random() < 0.01:
        return [b"", p.TAG, p.EXECUTE, header, b"[" + b"1," * (LIMIT // 2) + b"1]"]
    if rng.random() < 0.01:  # more tasks than one message may hold (protocol.md 2.4)
        many = p.MAX_BATCH_TASKS + 1
        headers = b"[" + b",".join([header] * many) + b"]"
        return [b"", p.TAG, p.EXECUTE, headers, b"[0" + b",0" * (many - 1) + b"]", b""]
    return rng.choice(choices)


class Checker(threading.Thread):
    """Valid work alongside the fuzzing: every answer must be right. `waited_for` is the id
    of the task it waits for now (None between two tasks)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ok = 0
        self.wrong: list[str] = []
        self.waited_for: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.url, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                function = "sleep" if n % 2 == 0 else "echo"
                value: Any = SLEEP if function == "sleep" else {"n": n, "big": 2**70 + n}
                task_id = f"valid-{n}"
                self.waited_for = task_id
                try:
                    answer = client.execute(function, value, task_id=task_id)
                except Exception as exc:  # any failure of valid work is a finding
                    self.wrong.append(f"{function} {task_id}: {exc!r}")
                    continue
                finally:
                    self.waited_for = None
                if answer == value:
                    self.ok += 1
                else:
                    self.wrong.append(f"{function}({value}) {task_id} returned {answer!r}")


class Forger:
    """A peer registered as a node (offering a function nobody calls) that sends RESULTs
    for tasks it does not hold; it counts the broker's ERROR not_holder answers."""

    def __init__(self, context: zmq.Context[Any], url: str) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        self.sent: dict[str, int] = {}  # forged RESULTs by task id
        self.refused = 0  # ERROR not_holder answers for a task it forged
        self.other: list[str] = []  # any other answer to a forged RESULT
        register = p.Register("fuzz-forger", socket.gethostname(), os.getpid(), ("forge",), 1)
        self.sock.send_multipart([b"", *p.encode(register)])
        if not self.sock.poll(10_000) or not isinstance(self._read(), p.Registered):
            raise SystemExit("error: the broker did not register the forger")

    def forge(self, rng: random.Random, task_id: str) -> None:
        self.sock.send_multipart(forged_result(rng, task_id))
        self.sent[task_id] = self.sent.get(task_id, 0) + 1

    def drain(self) -> None:
        while self.sock.poll(0):
            self._read()

    def _read(self) -> p.Message:
        frames = self.sock.recv_multipart()
        message = p.decode(frames[1:])
        if isinstance(message, p.Heartbeat):
            self.sock.send_multipart([b"", *p.encode(p.Heartbeat())])
        elif isinstance(message, p.Error) and message.code == p.ERR_NOT_HOLDER:
            if message.task_id in self.sent:
                self.refused += 1
            else:
                self.other.append(f"ERROR not_holder for {message.task_id}, never forged")
        elif not isinstance(message, p.Registered):
            self.other.append(f"{type(message).__name__}: {message!r}"[:200])
        return message

    def wait_for_refusals(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.refused < sum(self.sent.values()) and time.monotonic() < deadline:
            if self.sock.poll(100):
                self._read()


def fuzz(cluster: LocalCluster, checker: Checker, args: argparse.Namespace) -> dict[str, Any]:
    """Send the hostile messages and the flood; what was sent, and the forger's tally."""
    url = cluster.url
    rng = random.Random(args.seed)
    context: zmq.Context[Any] = zmq.Context.instance()
    forger = Forger(context, url)
    peers = [context.socket(zmq.DEALER) for _ in range(16)]
    for peer in peers:
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(url)
    deadline = time.monotonic() + args.seconds
    sent = 0
    while sent < args.messages and time.monotonic() < deadline:
        waited_for = checker.waited_for
        if waited_for is not None and rng.random() < FORGE_SHARE:
            forger.forge(rng, waited_for)
        else:
            rng.choice(peers).send_multipart(hostile(rng, waited_for))
        sent += 1
        for peer in peers:  # read (and drop) answers so these peers are not the flood
            while peer.poll(0):
                peer.recv_multipart()
        forger.drain()
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)
    flooder.connect(url)
    for i in range(args.flood):
        if time.monotonic() > deadline:
            break
        flooder.send_multipart([b"", p.TAG, b"NOPE", str(i).encode()])
        sent += 1
    settle(cluster)
    forger.wait_for_refusals()
    for sock in [*peers, flooder, forger.sock]:
        sock.close(linger=0)
    return {
        "hostile_messages_sent": sent,
        "forged_results_sent": sum(forger.sent.values()),
        "forged_results_refused": forger.refused,
        "forged_tasks": len(forger.sent),
        "forger_other_answers": forger.other[:10],
    }


def settle(cluster: LocalCluster, timeout: float = 30.0) -> None:
    """Wait until the broker has worked through the hostile messages: the counters of
    refusals stop moving (the checker's valid tasks keep the others moving)."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] | None = None
    while time.monotonic() < deadline:
        counters = {
            name: value
            for name, value in cluster.status(timeout=5)["counters"].items()
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
    parser.add_argument("--seed", type=int, default=1, help="seed of the hostile mix")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    cluster = LocalCluster(
        nodes=1,
        functions=["util", "math"],
        node_args=["--concurrency", "1"],
        broker_args=["--max-message-size", str(LIMIT)],
    )
    with cluster:
        assert cluster.broker is not None
        broker = cluster.broker
        rss_before = rss_kib(broker.pid)
        checker = Checker(cluster.url)
        checker.start()
        fuzzed = fuzz(cluster, checker, args)
        checker.stop.set()
        checker.join(15)
        alive = broker.alive()
        report: dict[str, Any] = {
            **fuzzed,
            "broker_alive": alive,
            "valid_tasks_ok": checker.ok,
            "valid_tasks_wrong": checker.wrong[:10],
            "broker_rss_kib_before": rss_before,
            "broker_rss_kib_after": rss_kib(broker.pid) if alive else None,
            "counters": cluster.status(timeout=5)["counters"] if alive else {},
        }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json else report)
    forged = report["forged_results_sent"]
    unrefused = forged != report["forged_results_refused"] or report["forger_other_answers"]
    sys.exit(0 if alive and not checker.wrong and checker.ok > 0 and not unrefused else 1)


if __name__ == "__main__":
    main()
