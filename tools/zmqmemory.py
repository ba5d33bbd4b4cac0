"""What libzmq itself keeps for each connection of a ROUTER: a bare pyzmq ROUTER, no broker,
and --peers DEALER peers, its resident memory per peer as messages go back and forth.

    .venv/bin/python tools/zmqmemory.py [--peers 1000] [--messages 1100] [--json]

This process binds the ROUTER on 127.0.0.1 and measures itself; a child process holds the
peers (their memory is not counted). Each peer says hello; then, in lockstep rounds, the
ROUTER sends one small message to every peer and each answers with one, so that after round
m every connection has carried m messages each way. At chosen rounds the ROUTER's RSS is read
after `malloc_trim(0)` (broker/trim.py: glibc's free pages handed back, so what is left is
held), and the cost per peer is (RSS - RSS before the peers came) / peers.

Why: the broker's RSS per idle node (docs/performance.md) is mostly this. Each connection
has two ypipes (one each way), and libzmq allocates a ypipe's queue in chunks of
message_pipe_granularity (256) messages of 64 bytes, 16 KiB each, keeping one spare chunk
once the queue has moved past its first; the stream engine adds its encoder and decoder
buffers (ZMQ_OUT_BATCH_SIZE and ZMQ_IN_BATCH_SIZE, 8 KiB each). So the cost steps up once a
connection has carried about 256 messages each way, and stays there. The granularity is
fixed when libzmq is built, and the batch sizes are DRAFT options that the libzmq bundled
with pyzmq's wheels refuses (EINVAL); --batch tries them, to show which.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import zmq

from broker.trim import trim

ROUNDS = (1, 64, 128, 200, 250, 255, 256, 257, 260, 300, 400, 511, 512, 513, 520, 800, 1100)
DEADLINE = 120.0  # seconds for any one step of the lockstep before it is given up


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (this tool needs Linux)")


def held_kib() -> int:
    trim()
    return rss_kib()


def peers_main(url: str, count: int) -> None:
    """The child: `count` DEALERs that answer every message with one of their own."""
    context = zmq.Context()
    context.setsockopt(zmq.MAX_SOCKETS, count + 64)
    sockets = []
    poller = zmq.Poller()
    for _ in range(count):
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(url)
        socket.send(b"hello")
        sockets.append(socket)
        poller.register(socket, zmq.POLLIN)
    while True:
        for socket, _ in poller.poll(1000):
            while True:
                try:
                    message = socket.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if message == b"bye":
                    return
                socket.send(b"pong")


def receive(router: zmq.Socket[bytes], count: int, child: subprocess.Popen[bytes]) -> set[bytes]:
    """`count` messages on the ROUTER, and the peers they came from."""
    senders: set[bytes] = set()
    deadline = time.monotonic() + DEADLINE
    got = 0
    while got < count:
        if not router.poll(500):
            if child.poll() is not None:
                raise SystemExit(f"the peers' process ended (exit {child.returncode})")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {got} of {count} messages came within {DEADLINE:.0f} s")
            continue
        while got < count:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            senders.add(frames[0])
            got += 1
    return senders


def batch_options(router: zmq.Socket[bytes]) -> dict[str, str]:
    """Whether this libzmq accepts the DRAFT batch-size options, each set to 1 KiB."""
    found = {}
    for name in ("IN_BATCH_SIZE", "OUT_BATCH_SIZE"):
        option = getattr(zmq, name, None)
        if option is None:
            found[name] = "unknown to pyzmq"
            continue
        try:
            router.setsockopt(option, 1024)
            found[name] = "set to 1024"
        except zmq.ZMQError as exc:
            found[name] = f"refused: {exc}"
    return found


def measure(peers: int, messages: int, batch: bool) -> dict[str, object]:
    context = zmq.Context()
    context.setsockopt(zmq.MAX_SOCKETS, 64)
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.BACKLOG, min(peers, 4096))
    tried = batch_options(router) if batch else {}
    port = router.bind_to_random_port("tcp://127.0.0.1")
    base = held_kib()
    command = [sys.executable, os.path.abspath(__file__), "--serve-peers", str(peers)]
    child = subprocess.Popen([*command, "--url", f"tcp://127.0.0.1:{port}"])
    rows = []
    try:
        ids = sorted(receive(router, peers, child))  # the hellos: round 1 from the peers
        if len(ids) != peers:
            raise SystemExit(f"{len(ids)} distinct peers said hello, not {peers}")
        marks = sorted({r for r in ROUNDS if r <= messages} | {messages})
        started = time.monotonic()
        for round_ in range(1, messages + 1):
            for peer in ids:
                router.send_multipart([peer, b"ping"])
            if round_ > 1:  # round 1's message from each peer was its hello
                receive(router, peers, child)
            if round_ in marks:
                held = held_kib()
                rows.append(
                    {
                        "messages": round_,
                        "rss_mib": round(held / 1024, 1),
                        "kib_per_peer": round((held - base) / peers, 1),
                    }
                )
                print(
                    f"  {round_:>5} messages each way: RSS {held / 1024:7.1f} MiB,"
                    f" {(held - base) / peers:6.1f} KiB a peer",
                    file=sys.stderr,
                    flush=True,
                )
        elapsed = time.monotonic() - started
        for peer in ids:
            router.send_multipart([peer, b"bye"])
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        router.close()
        context.term()
    return {
        "peers": peers,
        "libzmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
        "draft_api": zmq.has("draft"),
        "batch_options": tried,
        "rss_before_peers_mib": round(base / 1024, 1),
        "seconds": round(elapsed, 1),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=1000, help="DEALER peers (connections)")
    parser.add_argument(
        "--messages", type=int, default=1100, help="messages each connection carries each way"
    )
    parser.add_argument(
        "--batch", action="store_true", help="try ZMQ_IN/OUT_BATCH_SIZE = 1 KiB on the ROUTER"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve-peers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="ztb tools/zmqmemory.py 1")
    args = parser.parse_args()
    if args.serve_peers:
        peers_main(args.url, args.serve_peers)
        return
    if args.peers < 1 or args.messages < 1:
        parser.error("--peers and --messages must be at least 1")
    print(
        f"a bare ROUTER, {args.peers} DEALER peers, libzmq {zmq.zmq_version()}",
        file=sys.stderr,
    )
    found = measure(args.peers, args.messages, args.batch)
    if args.json:
        print(json.dumps(found))
        return
    for name, said in found["batch_options"].items():  # type: ignore[attr-defined]
        print(f"ZMQ_{name}: {said}")
    print(f"RSS before the peers: {found['rss_before_peers_mib']} MiB")
    print("messages each way   RSS MiB   KiB a peer")
    for row in found["rows"]:  # type: ignore[attr-defined]
        print(f"{row['messages']:>17}   {row['rss_mib']:>7}   {row['kib_per_peer']:>10}")


if __name__ == "__main__":
    main()
