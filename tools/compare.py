"""The bare pyzmq relay that our stack is measured against (`tools/bench.py breakdown`).

The relay is the floor of a broker on ZeroMQ in Python: a ROUTER that passes frames between
clients and DEALER echo workers without reading them, each in its own process, with the same
frame I/O as ours (broker.protocol.frames). Whatever our stack costs above it is the cost of
what the relay does not do: decoding, scheduling, the store, running a function.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from broker.protocol.frames import NOBLOCK, recv_frames, send_frames, send_routed
from node.supervisor import die_with_parent

HELPER_START_TIMEOUT = 10.0  # seconds the relay and its workers may take to be ready
READY = b"ready"  # a worker's first message: the relay learns its identity from it


class RelayError(RuntimeError):
    """A process of the relay did not start or died."""


class Relay:
    """A bare relay on 127.0.0.1, on a port the OS picks: one process whose ROUTER passes
    frames, and `workers` DEALER echo worker processes that it hands requests to in turn.

    Entering starts them and returns once every worker is ready (`url` is where clients
    connect; REQ and DEALER clients both work, with the envelope of protocol.md 2.1);
    leaving, also on an error or Ctrl-C, kills and reaps them all. Enter it before this
    process makes a ZeroMQ context: the helpers are forked, and a fork must not inherit one.
    """

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"a relay needs at least one worker, got {workers}")
        self.workers = workers
        self.url = ""
        self.pids: dict[str, int] = {}  # "relay", "echo-1", "echo-2", ...
        self._processes: list[BaseProcess] = []

    def __enter__(self) -> Relay:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        fork = multiprocessing.get_context("fork")
        ours, theirs = fork.Pipe()
        try:
            router = fork.Process(
                target=relay_main, args=(theirs, self.workers, os.getpid()), name="relay"
            )
            self._begin(router, "relay")
            self.url = self._receive(ours, "the relay to bind")
            for k in range(1, self.workers + 1):
                echo = fork.Process(target=echo_main, args=(self.url, os.getpid()), name="echo")
                self._begin(echo, f"echo-{k}")
            self._receive(ours, f"{self.workers} echo workers to be ready")
        finally:
            ours.close()
            theirs.close()

    def _begin(self, process: BaseProcess, name: str) -> None:
        process.daemon = True
        process.start()
        self._processes.append(process)
        self.pids[name] = process.pid or 0

    def _receive(self, conn: Connection, what: str) -> str:
        """The relay's next note, polled with a deadline; RelayError if a helper died."""
        deadline = time.monotonic() + HELPER_START_TIMEOUT
        while not conn.poll(0.02):
            for process in self._processes:
                if not process.is_alive():
                    raise RelayError(
                        f"the {process.name} process exited with {process.exitcode} while "
                        f"waiting for {what}"
                    )
            if time.monotonic() > deadline:
                raise RelayError(f"timed out after {HELPER_START_TIMEOUT:g} s waiting for {what}")
        return str(conn.recv())

    def close(self) -> None:
        """Kill and reap every helper process."""
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.join()
        self._processes = []


def become_helper(parent: int) -> None:
    """A helper leaves Ctrl-C to its parent, which reaps it, and dies with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def unbounded(sock: zmq.Socket[Any]) -> None:
    """No high-water marks: a window of any size is queued, never dropped by the ROUTER."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def relay_main(conn: Connection, workers: int, parent: int) -> None:
    """The relay process: bind, tell the parent where, wait for the workers, relay."""
    become_helper(parent)
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    unbounded(router)
    router.bind("tcp://127.0.0.1:*")
    conn.send(router.getsockopt_string(zmq.LAST_ENDPOINT))
    identities: list[bytes] = []
    while len(identities) < workers:
        frames = recv_frames(router)
        if frames[1:] == [READY]:
            identities.append(frames[0])
    conn.send("serving")
    conn.close()
    relay(router, identities)


def relay(router: zmq.Socket[Any], workers: list[bytes]) -> None:
    """Pass frames for ever: a request goes to the next worker in turn with its envelope
    (the client's identity and delimiter) in front; a worker's reply goes to the client that
    envelope names."""
    is_worker = frozenset(workers).__contains__
    turns = itertools.cycle(workers)
    while True:
        frames = recv_frames(router)
        if is_worker(frames[0]):  # [worker, "", client, "", tag, ...]
            send_routed(router, frames[2], frames[4:], NOBLOCK)
        else:  # [client, "", tag, ...]
            send_routed(router, next(turns), frames, NOBLOCK)


def echo_main(url: str, parent: int) -> None:
    """An echo worker process: each message goes back as it came."""
    become_helper(parent)
    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    unbounded(dealer)
    dealer.connect(url)
    send_frames(dealer, [READY])
    while True:
        send_frames(dealer, recv_frames(dealer))


# ================================================================================== /proc


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
