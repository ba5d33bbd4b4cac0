"""Many simulated ZTB/1 nodes from a few processes, for benchmarks and tests that need 1,000
to 10,000 nodes on one broker, which real `znode` processes (one Python process each) cannot
give on a small machine.

    .venv/bin/python tools/nodesim.py --broker tcp://127.0.0.1:5000 --nodes 1000 --processes 2
        [--functions noop,multiply,sleep] [--capacity 1] [--stagger 0] [--json]

Each simulated node is a DEALER socket of its own (its own connection and ROUTER identity),
and behaves on the wire as the reference node (node/link.py, node/agent.py) does:

  register   REGISTER {name NAME-PREFIX-WORKER-I, host, pid of its worker process, the
             --functions, --capacity, --prefetch when not 0, stop: true, attempts,
             adopts_interval: true} and wait for REGISTERED, whose heartbeat interval and
             liveness it adopts (and a new interval from a HEARTBEAT later). No REGISTERED
             within twice interval x liveness (1 s x 3 until a broker said otherwise): close
             the socket, wait 0.1 s doubling to 5 s (+-20 % jitter; back to 0.1 s after a
             REGISTERED), REGISTER again on a fresh socket, as node/link.py does with a
             connection that was made (7.3)
  heartbeat  HEARTBEAT after a full interval in which it sent nothing else (protocol.md 7.2)
  liveness   any message from the broker is a sign of life; a broker silent for twice
             interval x liveness is dead (as the reference node judges one whose connection
             holds: the simulator does not watch its connections, 7.2): a new socket and
             REGISTER again after the backoff (7.3,
             counted as broker deaths); DISCONNECT or ERROR not_registered too (counted as
             disconnects). The attempts it still runs or holds are claimed in `attempts`
  tasks      RUN is answered by RESULT with the RUN's task_id and attempt: noop (null),
             multiply (node/functions/mathset.py's, same checks and errors), sleep (the
             seconds given, answered on a timer, so nothing blocks; a RUN timeout_ms shorter
             than the sleep is answered exit 124 at the timeout), any other function exit
             127 UnknownFunction as node/runner.py answers one it does not have. Arguments
             are read by node/runner.py itself (exit 2 for bad ones), one RESULT per task
  capacity   at most --capacity sleeps run at once per node; RUNs beyond it (a broker sends
             them only within the --prefetch window) are held in order of arrival and start
             as slots free. RETRACT gives back the held ones (RETRACTED); STOP drops a held
             task or ends a running sleep at once, each answered exit 130 Cancelled (the
             reference node restarts its process for a running one: not simulated).
             STORED is counted and ignored: results are not kept for a resend
  not done   the socket monitor (a restarted broker on the same address is found by its
             DISCONNECT, not at the reconnection); RESULT batches; CURVE; `replaces`

The nodes are served by --processes worker processes (this file with a hidden --worker
option), each one thread on one ZeroMQ context: the sockets' ZMQ_FD in one epoll set and
every timer (heartbeats, liveness, register deadlines, sleeps) in one heap, so the work per
node event is O(log n). --stagger S spreads the nodes' first connects over S seconds (0: all
at once, a connection storm). A worker exits when its parent is gone (its stdin ends).

Runs until SIGINT or SIGTERM: each registered node then sends DEREGISTER (unless
--vanish-on-exit) and every socket is closed, the workers within 5 s (SIGKILL after). Every
--stats-interval seconds a progress line goes to stderr (registered/total, REGISTERs sent,
broker deaths, disconnects, RUNs answered) and, with --json, one JSON object to stdout: the
summed figures and `workers`, each worker's. Lines on stdin steer it while it runs:
  vanish K   K registered nodes, spread over the workers, close their sockets (linger 0)
             and stop without DEREGISTER, as a process that is killed; prints
             {"vanished": [names]} on stdout. Their connections close with them, which
             the broker notices at its next send to them (counter nodes_unreachable),
             sooner than their silence would tell
  freeze K   K registered nodes stop sending and reading but keep their connections open,
             as a hung process or a lost host: the broker finds them only by their silence
             (interval x liveness, nodes_expired); prints {"frozen": [names]} on stdout
  stats      prints the JSON stats object on stdout at once

From Python (tests/integration/test_nodesim.py loads this file by its path):

    with NodeSim(url, nodes=1000, processes=2, functions=("noop", "multiply")) as sim:
        sim.wait_registered(timeout=30)
        stats = sim.stats()  # registered, registers_sent, broker_deaths, register_counts, ...
        names = sim.vanish(100)  # or sim.freeze(100)

Exit status 0 after SIGINT or SIGTERM, 1 if a worker died, 2 for bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import logging
import os
import random
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import zmq

from broker.protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS,
    ERR_MALFORMED,
    ERR_NOT_REGISTERED,
    EXIT_CANCELLED,
    EXIT_OK,
    Batch,
    Claim,
    Deregister,
    Disconnect,
    Error,
    ErrorInfo,
    Heartbeat,
    Register,
    Registered,
    RemoteProtocolError,
    Result,
    Retract,
    Retracted,
    Run,
    Stop,
    Stored,
    decode,
    encode,
    loads_payload,
)
from broker.protocol.frames import NOBLOCK, readable, recv_frames, send_frames
from broker.protocol.version import package_version
from node.functions.mathset import MAX_SLEEP, multiply
from node.functions.util import noop
from node.link import (
    CLOSE_LINGER_MS,
    JITTER,
    MAX_BACKOFF,
    MIN_BACKOFF,
    RECONNECT_IVL_MAX_MS,
    RECONNECT_IVL_MS,
    REGISTER_PATIENCE,
)
from node.restarts import cancelled_result, overdue_result
from node.runner import result_of, run_task

log = logging.getLogger("nodesim")

SLEEP = "sleep"
DEFAULT_FUNCTIONS = ("noop", "multiply", SLEEP)
HOUSEKEEPING = 0.5  # seconds between a worker's looks at its parent
STOP_TIMEOUT = 5.0  # seconds workers get to stop before SIGKILL
REPLY_TIMEOUT = 10.0  # seconds a worker gets to answer a control line
TAKE = {"vanish": "vanished", "freeze": "frozen"}  # control commands that stop nodes
HEARTBEAT_FRAMES = encode(Heartbeat())
DEREGISTER_FRAMES = encode(Deregister())
# The figures of a worker that are summed over the workers.
SUMMED = (
    "nodes",
    "registered",
    "registers_sent",
    "broker_deaths",
    "disconnects",
    "runs",
    "answered",
    "heartbeats_sent",
    "malformed",
    "errors",
    "retracts",
    "stops",
    "stored",
    "send_blocked",
    "internal_errors",
    "vanished",
    "frozen",
    "socket_errors",
)


def sleep(seconds: float) -> float:
    """node/functions/mathset.py's sleep, with its checks, minus the sleep: the worker
    answers its RUN on a timer, `seconds` later, and serves its other nodes meanwhile."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"sleep() expects a number for 'seconds', got {type(seconds).__name__}")
    if not 0 <= seconds <= MAX_SLEEP:
        raise ValueError(f"sleep() expects 0 to {MAX_SLEEP:g} seconds, got {seconds}")
    return seconds


SIMULATED: dict[str, Callable[..., Any]] = {"noop": noop, "multiply": multiply, SLEEP: sleep}


# =================================================================================== a worker


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process serves: nodes `index`, `index + processes`, ... of `total`
    (for the stagger) are its `count` nodes."""

    index: int
    count: int
    total: int
    processes: int
    broker: str
    functions: tuple[str, ...]
    capacity: int = 1
    prefetch: int = 0
    stagger: float = 0.0
    name_prefix: str = "sim"
    vanish_on_exit: bool = False
    sndhwm: int | None = None
    rcvhwm: int | None = None
    parent_pid: int = 0  # the worker stops when its parent is no longer this process


@dataclass(eq=False)
class _Task:
    """A sleep that occupies a slot until its timer; `cancelled` by a STOP (or its node
    vanished): the timer then does nothing."""

    run: Run
    frames: list[bytes]  # its RESULT
    cancelled: bool = False


@dataclass(eq=False)
class SimNode:
    """One simulated node: its socket and what node/link.py's BrokerLink knows."""

    name: str
    sock: zmq.Socket[bytes] | None = None
    fd: int = -1
    registered: bool = False
    registered_before: bool = False  # a later REGISTER claims what it still has (7.3)
    gone: bool = False  # vanished, frozen or stopped: its timers do nothing
    interval: float = DEFAULT_HEARTBEAT_INTERVAL  # until REGISTERED says otherwise
    liveness: int = DEFAULT_LIVENESS
    backoff: float = MIN_BACKOFF
    connect_at: float = 0.0
    register_deadline: float = 0.0
    last_sent: float = 0.0
    last_heard: float = 0.0
    timer: int = 0  # the generation of its link timer: older heap entries are stale
    registers: int = 0  # REGISTERs it sent
    recheck: bool = False  # look at its socket again: a send may have taken the FD's edge
    running: dict[str, _Task] = field(default_factory=dict)  # sleeps, by task id
    held: dict[str, Run] = field(default_factory=dict)  # RUNs beyond capacity, in order
    # RESULTs and RETRACTEDs that wait for a registration, with the claim of each RESULT.
    unsent: list[tuple[list[bytes], Claim | None]] = field(default_factory=list)

    @property
    def expiry(self) -> float:
        return self.interval * self.liveness

    @property
    def patience(self) -> float:
        """How long it waits for REGISTERED, and for a sign of life from the broker, as the
        reference node does while its connection holds (node/link.py REGISTER_PATIENCE and
        `broker_dead`): the simulator does not watch its connections."""
        return REGISTER_PATIENCE * self.expiry


# A heap entry: (when, sequence, node or None for the worker's housekeeping, the node's
# link timer generation or the task whose sleep ends).
Timer = tuple[float, int, SimNode | None, int | _Task]


class Worker:
    """Serves `config.count` simulated nodes on one thread until stopped; `run()` gives the
    exit code."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.functions = {name: SIMULATED[name] for name in config.functions if name in SIMULATED}
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.monotonic()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # Sockets closed at a reconnection are reaped in the background: room for both.
        self.context.set(zmq.MAX_SOCKETS, min(2 * config.count + 64, self._socket_limit()))
        self.epoll = select.epoll()
        self.by_fd: dict[int, SimNode] = {}
        self.timers: list[Timer] = []
        self.sequence = 0
        self.recheck: list[SimNode] = []
        self.frozen: list[zmq.Socket[bytes]] = []  # the sockets of frozen nodes
        self.stopping = False
        self.counts: Counter[str] = Counter()
        self.registered_once = 0  # nodes that were registered at least once
        self.all_registered_s: float | None = None  # when the last of them first was
        self.control = b""  # what came on stdin, not a whole line yet
        prefix = f"{config.name_prefix}-{config.index}"
        self.nodes = [SimNode(f"{prefix}-{i}") for i in range(config.count)]

    def _socket_limit(self) -> int:
        return int(self.context.get(zmq.SOCKET_LIMIT))

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C)
        os.set_blocking(0, False)
        self.epoll.register(0, select.EPOLLIN)
        self.epoll.register(wake_r.fileno(), select.EPOLLIN)
        self._start_nodes()
        try:
            while not self.stopping:
                self._step(wake_r)
        finally:
            self._close()
            wake_r.close()
            wake_w.close()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _start_nodes(self) -> None:
        config, now = self.config, time.monotonic()
        for i, node in enumerate(self.nodes):
            rank = i * config.processes + config.index  # interleaved over the workers
            node.connect_at = now + config.stagger * rank / max(config.total, 1)
            self._schedule(node, node.connect_at)
        self._push(now + HOUSEKEEPING, None, 0)

    def _step(self, wake: socket.socket) -> None:
        timeout = -1.0
        if self.recheck:
            timeout = 0.0
        elif self.timers:
            timeout = max(0.0, self.timers[0][0] - time.monotonic())
        for fd, _ in self.epoll.poll(timeout):
            node = self.by_fd.get(fd)
            if node is not None:
                self._drain(node)
            elif fd == 0:
                self._on_stdin()
            elif fd == wake.fileno():
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)  # a signal: its handler has run
        self._run_timers()
        self._recheck()

    def _recheck(self) -> None:
        """Drain the sockets sent on: a send processes the socket's commands and may take
        the edge of its ZMQ_FD, so an arrival would not wake epoll."""
        while self.recheck:
            nodes, self.recheck = self.recheck, []
            for node in nodes:
                node.recheck = False
                self._drain(node)

    def _push(self, when: float, node: SimNode | None, token: int | _Task) -> None:
        self.sequence += 1
        heapq.heappush(self.timers, (when, self.sequence, node, token))

    def _schedule(self, node: SimNode, when: float) -> None:
        """(Re)set the node's link timer: the earlier entries go stale."""
        node.timer += 1
        self._push(when, node, node.timer)

    def _run_timers(self) -> None:
        timers = self.timers
        while timers and timers[0][0] <= time.monotonic() and not self.stopping:
            _, _, node, token = heapq.heappop(timers)
            if node is None:
                self._housekeeping()
            elif isinstance(token, _Task):
                self._finish(node, token)
            elif token == node.timer and not node.gone:
                self._upkeep(node, time.monotonic())

    def _housekeeping(self) -> None:
        if os.getppid() != self.config.parent_pid:
            log.error("nodesim worker %d: the parent is gone; stopping", self.config.index)
            self.stopping = True
            return
        self._push(time.monotonic() + HOUSEKEEPING, None, 0)

    # ------------------------------------------------------------------ the link (node/link.py)
    #
    # When a node sends REGISTER, as the reference node times it (node/link.py and
    # node/agent.py `_upkeep`): each REGISTER goes out on a fresh DEALER (BrokerLink.connect)
    # and waits REGISTER_PATIENCE x interval x liveness for REGISTERED (`register_deadline`:
    # the node's own 1 s x 3 until a broker announced its values, protocol.md 4.2; the
    # broker's after), as a reference node whose connection was made. Then BrokerLink.retry
    # closes that socket and the next REGISTER goes out on a new one after
    # BrokerLink._next_delay(): MIN_BACKOFF (0.1 s) doubling up to MAX_BACKOFF (5 s), each
    # delay varied by +-JITTER (20 %); REGISTERED resets it to MIN_BACKOFF. So a node whose
    # broker does not answer sends REGISTER at about 0, 6.1, 12.3, 18.7, ... seconds.
    # The same delay comes before the REGISTER that follows a DISCONNECT, an ERROR
    # not_registered or a broker found dead.

    def _upkeep(self, node: SimNode, now: float) -> None:
        """node/agent.py `_upkeep` and BrokerLink `due`, less the socket monitor."""
        if node.sock is None:
            if now >= node.connect_at:
                self._connect(node, now)
            else:
                self._schedule(node, node.connect_at)
        elif not node.registered:
            if now >= node.register_deadline:
                self._drop(node, self._next_delay(node), now)  # BrokerLink.retry
            else:
                self._schedule(node, node.register_deadline)
        elif now >= node.last_heard + node.patience:
            self.counts["broker_deaths"] += 1
            self._drop(node, self._next_delay(node), now)
        else:
            if node.unsent:
                self._flush(node)
            if now >= node.last_sent + node.interval and self._send(node, HEARTBEAT_FRAMES):
                self.counts["heartbeats_sent"] += 1
            due = min(node.last_sent + node.interval, node.last_heard + node.patience)
            # A HEARTBEAT that found the socket full: try again a while later (as
            # BrokerLink.next_heartbeat), not at once.
            self._schedule(node, due if due > now else now + node.interval / 4)

    def _connect(self, node: SimNode, now: float) -> None:
        """BrokerLink.connect: a fresh DEALER (linger 0, as the reference node's), REGISTER on
        it, and REGISTERED awaited until twice interval x liveness from now."""
        config = self.config
        try:
            sock = self.context.socket(zmq.DEALER)
        except zmq.ZMQError as exc:  # too many sockets or descriptors: try again later
            self.counts["socket_errors"] += 1
            log.warning("nodesim: node %s cannot open a socket: %s", node.name, exc)
            node.connect_at = now + self._next_delay(node)
            self._schedule(node, node.connect_at)
            return
        sock.linger = 0
        jitter = random.uniform(1 - JITTER, 1 + JITTER)
        sock.setsockopt(zmq.RECONNECT_IVL, round(RECONNECT_IVL_MS * jitter))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if config.sndhwm is not None:
            sock.sndhwm = config.sndhwm
        if config.rcvhwm is not None:
            sock.rcvhwm = config.rcvhwm
        sock.connect(config.broker)
        fd = int(sock.get(zmq.FD))
        self.epoll.register(fd, select.EPOLLIN)
        self.by_fd[fd] = node
        node.sock, node.fd, node.registered = sock, fd, False
        node.register_deadline = now + node.patience
        node.last_heard = now
        # As node/agent.py: `attempts` on every REGISTER, empty on the process's first.
        claims = self._claims(node) if node.registered_before else ()
        register = Register(
            node.name,
            self.host,
            self.pid,
            config.functions,
            config.capacity,
            None,
            config.prefetch,
            stop=True,
            attempts=claims,
            adopts_interval=True,
        )
        node.registers += 1
        self.counts["registers_sent"] += 1
        self._send(node, encode(register))
        self._schedule(node, node.register_deadline)

    def _claims(self, node: SimNode) -> tuple[Claim, ...]:
        """What a REGISTER after the first claims (protocol.md 7.3): the sleeps it runs, the
        RUNs it holds, the RESULTs it has not sent."""
        claims = [Claim(task.run.task_id, task.run.attempt) for task in node.running.values()]
        claims += [Claim(run.task_id, run.attempt, held=True) for run in node.held.values()]
        claims += [claim for _, claim in node.unsent if claim is not None]
        return tuple(claims)

    def _next_delay(self, node: SimNode) -> float:
        """BrokerLink._next_delay: the backoff +-JITTER, doubling up to MAX_BACKOFF."""
        delay = node.backoff * random.uniform(1 - JITTER, 1 + JITTER)
        node.backoff = min(node.backoff * 2, MAX_BACKOFF)
        return delay

    def _drop(self, node: SimNode, delay: float, now: float) -> None:
        """BrokerLink.drop: close the socket and connect again after `delay`."""
        self._close_socket(node, 0)
        node.connect_at = now + delay
        self._schedule(node, node.connect_at)

    def _close_socket(self, node: SimNode, linger: int) -> None:
        sock = node.sock
        if sock is None:
            return
        self.epoll.unregister(node.fd)
        del self.by_fd[node.fd]
        sock.close(linger=linger)
        node.sock, node.fd, node.registered = None, -1, False

    def _send(self, node: SimNode, frames: list[bytes]) -> bool:
        """Send one message now; False if it could not be queued (the socket is full)."""
        sock = node.sock
        if sock is None:
            return False
        try:
            send_frames(sock, [b"", *frames], NOBLOCK)
        except zmq.Again:
            self.counts["send_blocked"] += 1
            return False
        node.last_sent = time.monotonic()
        if not node.recheck:
            node.recheck = True
            self.recheck.append(node)
        return True

    def _send_in_order(self, node: SimNode, frames: list[bytes], claim: Claim | None) -> None:
        """BrokerLink.send_in_order: now if registered, else once registered, in order."""
        if node.registered and not node.unsent and self._send(node, frames):
            return
        node.unsent.append((frames, claim))

    def _flush(self, node: SimNode) -> None:
        while node.unsent and node.registered and self._send(node, node.unsent[0][0]):
            node.unsent.pop(0)

    # ------------------------------------------------------------------ from the broker

    def _drain(self, node: SimNode) -> None:
        """Every message waiting on the node's socket (ZMQ_FD is edge-triggered: read until
        EVENTS says nothing waits)."""
        sock = node.sock
        while sock is not None and node.sock is sock:
            try:
                if not readable(sock):
                    return
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            node.last_heard = time.monotonic()  # any message is a sign of life
            try:
                self._handle(node, frames)
            except Exception:  # a bug here must not end the other nodes
                self.counts["internal_errors"] += 1
                log.exception("nodesim: node %s could not handle %r", node.name, frames[:3])

    def _handle(self, node: SimNode, frames: list[bytes]) -> None:
        try:
            if frames[0]:
                raise RemoteProtocolError(ERR_MALFORMED, "missing the empty delimiter frame")
            msg = decode(frames[1:])
        except RemoteProtocolError as exc:
            self._malformed(node, str(exc))
            return
        if type(msg) is Run:
            self._on_run(node, msg)
        elif type(msg) is Heartbeat:
            if msg.interval is not None:  # as BrokerLink.on_heartbeat (protocol.md 7.1)
                node.interval = msg.interval
        elif isinstance(msg, Batch):
            for item in msg.items:
                if type(item) is Run:
                    self._on_run(node, item)
                else:
                    self._malformed(node, f"a batch from the broker holds {item!r}")
        elif isinstance(msg, Registered):
            self._on_registered(node, msg)
        else:
            self._on_control(node, msg)

    def _malformed(self, node: SimNode, why: str) -> None:
        self.counts["malformed"] += 1
        log.debug("nodesim: node %s ignores a malformed message: %s", node.name, why)

    def _on_control(self, node: SimNode, msg: object) -> None:
        if isinstance(msg, Retract):
            self._on_retract(node, msg)
        elif isinstance(msg, Stop):
            self._on_stop(node, msg)
        elif isinstance(msg, Stored):
            self.counts["stored"] += 1  # nothing kept to confirm
        elif isinstance(msg, Disconnect) or (
            isinstance(msg, Error) and msg.code == ERR_NOT_REGISTERED
        ):
            self.counts["disconnects"] += 1
            self._drop(node, self._next_delay(node), time.monotonic())
        elif isinstance(msg, Error):
            self.counts["errors"] += 1
            log.debug("nodesim: node %s got error %s: %s", node.name, msg.code, msg.message)
        else:
            self._malformed(node, f"unexpected {type(msg).__name__} for a node")

    def _on_registered(self, node: SimNode, msg: Registered) -> None:
        """node/agent.py `_on_registered` and BrokerLink.on_registered."""
        node.registered = True
        node.interval, node.liveness = msg.heartbeat_interval, msg.liveness
        node.backoff = MIN_BACKOFF
        # The first HEARTBEAT at a point of the interval of its own (protocol.md 7.2).
        node.last_sent = time.monotonic() - node.interval * random.random()
        if node.registered_before and not msg.adopts:
            node.held.clear()  # a broker that took no claims places them again itself
        if not node.registered_before:
            node.registered_before = True
            self.registered_once += 1
            if self.registered_once == len(self.nodes):
                self.all_registered_s = time.monotonic() - self.started
        self._flush(node)
        self._schedule(node, min(node.last_sent + node.interval, node.last_heard + node.patience))
        self._start_held(node)

    # ------------------------------------------------------------------ tasks

    def _on_run(self, node: SimNode, run: Run) -> None:
        self.counts["runs"] += 1
        if run.task_id in node.running or run.task_id in node.held:
            return  # a RUN it has already
        if len(node.running) < self.config.capacity:
            self._start(node, run)
        else:
            node.held[run.task_id] = run

    def _start(self, node: SimNode, run: Run) -> None:
        outcome = run_task(self.functions, run.function, run.args, run.inputs)
        if run.function != SLEEP or outcome.exit_code != EXIT_OK:
            self._answer(node, result_of(run, outcome), run)
            return
        seconds = float(loads_payload(outcome.result))
        frames = result_of(run, outcome)
        if run.task_timeout is not None and run.task_timeout < seconds:
            seconds, frames = run.task_timeout, encode(overdue_result(run))
        task = _Task(run, frames)
        node.running[run.task_id] = task
        self._push(time.monotonic() + seconds, node, task)

    def _finish(self, node: SimNode, task: _Task) -> None:
        if task.cancelled or node.gone:
            return
        del node.running[task.run.task_id]
        self._answer(node, task.frames, task.run)
        self._start_held(node)

    def _start_held(self, node: SimNode) -> None:
        while node.held and len(node.running) < self.config.capacity:
            task_id = next(iter(node.held))
            self._start(node, node.held.pop(task_id))

    def _answer(self, node: SimNode, frames: list[bytes], run: Run) -> None:
        self.counts["answered"] += 1
        self._send_in_order(node, frames, Claim(run.task_id, run.attempt, done=True))

    def _on_retract(self, node: SimNode, msg: Retract) -> None:
        """Give back what has not started (protocol.md 3.15)."""
        self.counts["retracts"] += 1
        returned = [t for t in msg.task_ids if node.held.pop(t, None) is not None]
        given = set(returned)
        started = [task_id for task_id in msg.task_ids if task_id not in given]
        self._send_in_order(node, encode(Retracted(tuple(returned), tuple(started))), None)

    def _on_stop(self, node: SimNode, msg: Stop) -> None:
        """Cancelled tasks (protocol.md 3.20): a held one is dropped, a running sleep ends
        now; each is answered exit 130. A task answered already, or unknown: nothing."""
        self.counts["stops"] += 1
        for task_id in dict.fromkeys(msg.task_ids):
            held = node.held.pop(task_id, None)
            if held is not None:
                self._answer(node, encode(cancelled_result(held, started=False)), held)
                continue
            task = node.running.pop(task_id, None)
            if task is not None:
                task.cancelled = True
                run = task.run
                text = f"{run.function}() was cancelled by a client (attempt {run.attempt})"
                cancelled = Result(
                    task_id, EXIT_CANCELLED, b"null", ErrorInfo("Cancelled", text), run.attempt
                )
                self._answer(node, encode(cancelled), run)
        self._start_held(node)

    # ------------------------------------------------------------------ control (stdin)

    def _on_stdin(self) -> None:
        """Control lines from the parent, each answered by one JSON line on stdout: `stats`,
        `vanish K`, `freeze K`, `stop`. The end of stdin (the parent is gone) stops the worker."""
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.epoll.unregister(0)
            self.stopping = True
            return
        self.control += data
        while b"\n" in self.control:
            line, _, self.control = self.control.partition(b"\n")
            reply = self._command(line.decode(errors="replace").split())
            if reply is not None:
                _write_line(reply)

    def _command(self, words: list[str]) -> dict[str, Any] | None:
        if words == ["stats"]:
            return self.stats()
        if len(words) == 2 and words[0] in TAKE and words[1].isdigit():
            return {TAKE[words[0]]: self.take(int(words[1]), words[0] == "freeze")}
        if words == ["stop"]:
            self.stopping = True
            return None
        return {"error": f"unknown command {' '.join(words)!r}"}

    def stats(self) -> dict[str, Any]:
        live = [node for node in self.nodes if not node.gone]
        counts = Counter(node.registers for node in live)
        figures: dict[str, Any] = {name: self.counts[name] for name in SUMMED}
        figures.update(
            worker=self.config.index,
            pid=self.pid,
            nodes=len(live),
            registered=sum(1 for node in live if node.registered),
            register_counts={str(k): v for k, v in sorted(counts.items())},
            max_registers=max(counts, default=0),
            all_registered_s=self.all_registered_s,
            cpu_s=round(time.process_time(), 3),
        )
        return figures

    def take(self, count: int, freeze: bool) -> list[str]:
        """`count` registered nodes (the last ones) stop without DEREGISTER; their names.
        Each closes its socket with linger 0 (vanished), or with `freeze` keeps it open,
        neither reading nor sending on it until the worker ends (frozen)."""
        chosen = [node for node in reversed(self.nodes) if node.registered and not node.gone]
        names = []
        for node in chosen[:count]:
            node.gone = True
            if freeze and node.sock is not None:
                self.epoll.unregister(node.fd)
                del self.by_fd[node.fd]
                self.frozen.append(node.sock)
                node.sock, node.fd, node.registered = None, -1, False
            else:
                self._close_socket(node, 0)
            names.append(node.name)
        self.counts["frozen" if freeze else "vanished"] += len(names)
        return names

    def _close(self) -> None:
        """Stop every node: DEREGISTER from the registered ones unless they vanish, then
        close every socket (a linger lets DEREGISTER leave) and end the context."""
        clean = not self.config.vanish_on_exit
        for node in self.nodes:
            if node.gone:
                continue
            node.gone = True
            if clean and node.registered:
                self._send(node, DEREGISTER_FRAMES)
            self._close_socket(node, CLOSE_LINGER_MS if clean else 0)
        for sock in self.frozen:
            sock.close(linger=0)
        self.epoll.close()
        self.context.term()


def _write_line(value: dict[str, Any]) -> None:
    """One JSON line on stdout (fd 1, blocking), whole."""
    data = memoryview(orjson.dumps(value) + b"\n")
    while data:
        data = data[os.write(1, data) :]


def _raise_fd_limit(nodes: int) -> None:
    """Each node costs its worker two descriptors (the socket's mailbox, its connection), and
    twice that while the sockets closed at a reconnection are reaped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * nodes + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            log.warning(
                "nodesim: %d descriptors allowed, %d nodes want about %d", new, nodes, wanted
            )


def serve_worker(text: str) -> int:
    """The hidden `--worker CONFIG` mode: serve the nodes CONFIG (JSON) names."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    fields = orjson.loads(text)
    fields["functions"] = tuple(fields["functions"])
    config = WorkerConfig(**fields)
    _raise_fd_limit(config.count)
    return Worker(config).run()


# ================================================================================ the parent


class SimError(RuntimeError):
    """A worker process died, or did not answer in time."""


@dataclass(eq=False)
class _WorkerProcess:
    """A worker and the pipes to it: control lines in, one JSON line out per line."""

    config: WorkerConfig
    popen: subprocess.Popen[bytes]
    buffer: bytes = b""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def died(self) -> str:
        code = self.popen.poll()
        state = "closed its pipe" if code is None else f"exited with status {code}"
        return f"nodesim worker {self.config.index} (pid {self.popen.pid}) {state}"

    def send(self, line: str) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(line.encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise SimError(self.died()) from None

    def reply(self, deadline: float) -> dict[str, Any]:
        """The next JSON line, waiting until `deadline` (monotonic) at most."""
        stdout = self.popen.stdout
        assert stdout is not None
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SimError(f"nodesim worker {self.config.index} did not answer in time")
            ready, _, _ = select.select([stdout.fileno()], [], [], min(remaining, 0.1))
            if not ready:
                if not self.alive():
                    raise SimError(self.died())
                continue
            data = os.read(stdout.fileno(), 1 << 16)
            if not data:
                raise SimError(self.died())
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        reply: dict[str, Any] = orjson.loads(line)
        return reply


def merge(replies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The workers' figures summed, with `workers`, each one's."""
    total: dict[str, Any] = {name: sum(reply[name] for reply in replies) for name in SUMMED}
    counts: Counter[int] = Counter()
    for reply in replies:
        counts.update({int(k): v for k, v in reply["register_counts"].items()})
    total["register_counts"] = {str(k): v for k, v in sorted(counts.items())}
    total["max_registers"] = max(counts, default=0)
    each = [reply["all_registered_s"] for reply in replies]
    total["all_registered_s"] = None if None in each else max(each, default=0.0)
    total["cpu_s"] = round(sum(reply["cpu_s"] for reply in replies), 3)
    total["workers"] = list(replies)
    return total


def shares(count: int, available: Sequence[int]) -> list[int]:
    """`count` spread over workers that have `available` each, one at a time in turn."""
    given = [0] * len(available)
    left = min(count, sum(available))
    while left > 0:
        for i, most in enumerate(available):
            if left > 0 and given[i] < most:
                given[i] += 1
                left -= 1
    return given


def check_url(url: str) -> None:
    """ValueError if ZeroMQ cannot connect to `url` (a typo, an unknown transport)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(url)
    except zmq.ZMQError as exc:
        raise ValueError(f"cannot connect to broker URL {url!r}: {exc}") from None
    finally:
        sock.close()
        context.term()


class NodeSim:
    """`nodes` simulated nodes served by `processes` worker processes (this file, --worker).

    Entering the context starts the workers (`start()`); leaving it stops them, SIGTERM
    then SIGKILL after STOP_TIMEOUT, and reaps them, even on an error. The other calls
    fail with SimError if a worker died. Use it from one thread."""

    def __init__(
        self,
        broker_url: str,
        nodes: int = 1000,
        processes: int = 2,
        functions: Sequence[str] = DEFAULT_FUNCTIONS,
        *,
        capacity: int = 1,
        prefetch: int = 0,
        stagger: float = 0.0,
        name_prefix: str = "sim",
        vanish_on_exit: bool = False,
        sndhwm: int | None = None,
        rcvhwm: int | None = None,
    ) -> None:
        if nodes < 1 or processes < 1 or not functions or stagger < 0:
            raise ValueError("nodes and processes must be at least 1, functions not empty")
        if not 1 <= capacity <= 1_000_000 or not 0 <= prefetch <= 1_000_000:
            raise ValueError("capacity must be 1 to 1,000,000 and prefetch 0 to 1,000,000")
        if not all(1 <= len(name) <= 256 for name in (*functions, name_prefix)):
            raise ValueError("function names and the name prefix must be 1 to 256 characters")
        self.broker_url = broker_url
        self.nodes = nodes
        self.processes = min(processes, nodes)
        self.vanished = 0
        self._configs = [
            WorkerConfig(
                index=index,
                count=len(range(index, nodes, self.processes)),
                total=nodes,
                processes=self.processes,
                broker=broker_url,
                functions=tuple(functions),
                capacity=capacity,
                prefetch=prefetch,
                stagger=stagger,
                name_prefix=name_prefix,
                vanish_on_exit=vanish_on_exit,
                sndhwm=sndhwm,
                rcvhwm=rcvhwm,
            )
            for index in range(self.processes)
        ]
        self._workers: list[_WorkerProcess] = []

    def start(self) -> NodeSim:
        check_url(self.broker_url)
        try:
            for config in self._configs:
                own = replace(config, parent_pid=os.getpid())
                argv = [sys.executable, str(Path(__file__).resolve())]
                argv += ["--worker", orjson.dumps(asdict(own)).decode()]
                popen = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
                )
                self._workers.append(_WorkerProcess(own, popen))
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> NodeSim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [worker.popen.pid for worker in self._workers]

    def alive(self) -> bool:
        """Whether every worker runs."""
        return bool(self._workers) and all(worker.alive() for worker in self._workers)

    def _ask(self, lines: Sequence[str | None], timeout: float) -> list[dict[str, Any] | None]:
        """Send each worker its line (None: none) and gather the answers, in order."""
        if not self._workers:
            raise SimError("the simulator is not running")
        for worker, line in zip(self._workers, lines, strict=True):
            if line is not None:
                worker.send(line)
        deadline = time.monotonic() + timeout
        return [
            None if line is None else worker.reply(deadline)
            for worker, line in zip(self._workers, lines, strict=True)
        ]

    def stats(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The workers' figures summed (see `merge`): nodes (not vanished), registered,
        registers_sent, broker_deaths, disconnects, runs (RUNs received), answered (RESULTs),
        heartbeats_sent, malformed, errors, stored, send_blocked, vanished, frozen, ...;
        register_counts ({"REGISTERs sent": nodes}) and max_registers; all_registered_s
        (when every node of the slowest worker had registered once, from its start; None
        before); cpu_s (the workers' CPU seconds); `workers`, each one's."""
        replies = self._ask(["stats"] * len(self._workers), timeout)
        return merge([reply for reply in replies if reply is not None])

    def wait_registered(self, timeout: float = 30.0, count: int | None = None) -> dict[str, Any]:
        """Until `count` nodes (default: all not vanished or frozen) are registered at once;
        their stats. SimError after `timeout` seconds or if a worker dies."""
        wanted = self.nodes - self.vanished if count is None else count
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["registered"] >= wanted:
                return stats
            if time.monotonic() > deadline:
                raise SimError(
                    f"{stats['registered']} of {wanted} nodes registered after {timeout:g} s "
                    f"({stats['registers_sent']} REGISTERs sent)"
                )
            time.sleep(0.05)

    def vanish(self, count: int, timeout: float = REPLY_TIMEOUT) -> list[str]:
        """`count` registered nodes, spread over the workers, close their sockets with
        linger 0 and stop without DEREGISTER; their names (fewer if fewer are registered)."""
        return self._take("vanish", count, timeout)

    def freeze(self, count: int, timeout: float = REPLY_TIMEOUT) -> list[str]:
        """`count` registered nodes, spread over the workers, stop reading and sending but
        keep their connections open, so that the broker finds them only by their silence;
        their names (fewer if fewer are registered)."""
        return self._take("freeze", count, timeout)

    def _take(self, verb: str, count: int, timeout: float) -> list[str]:
        registered = [worker["registered"] for worker in self.stats(timeout)["workers"]]
        lines = [f"{verb} {n}" if n else None for n in shares(count, registered)]
        replies = self._ask(lines, timeout)
        names = [name for reply in replies if reply is not None for name in reply[TAKE[verb]]]
        self.vanished += len(names)
        return names

    def close(self) -> None:
        """Stop the workers (the end of their stdin and SIGTERM; SIGKILL after STOP_TIMEOUT)
        and reap them. Safe to call twice."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                if worker.popen.stdin is not None:
                    worker.popen.stdin.close()
            if worker.alive():
                worker.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in workers:
            try:
                worker.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.popen.kill()
                worker.popen.wait()
            if worker.popen.stdout is not None:
                worker.popen.stdout.close()


# =================================================================================== the CLI


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the simulator like Ctrl-C


def _progress(stats: dict[str, Any], elapsed: float, args: argparse.Namespace) -> None:
    print(
        f"nodesim {elapsed:7.1f}s: {stats['registered']}/{stats['nodes']} registered, "
        f"{stats['registers_sent']} REGISTERs sent, {stats['broker_deaths']} broker deaths, "
        f"{stats['disconnects']} disconnects, {stats['answered']} RUNs answered, "
        f"cpu {stats['cpu_s']:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    if args.json:
        _print_json({"elapsed_s": round(elapsed, 3), **stats})


def _print_json(value: dict[str, Any]) -> None:
    print(orjson.dumps(value).decode(), flush=True)


def _on_line(sim: NodeSim, line: str, started: float) -> None:
    words = line.split()
    if words == ["stats"]:
        _print_json({"elapsed_s": round(time.monotonic() - started, 3), **sim.stats()})
    elif len(words) == 2 and words[0] in TAKE and words[1].isdigit():
        verb, done = words[0], TAKE[words[0]]
        names = sim.vanish(int(words[1])) if verb == "vanish" else sim.freeze(int(words[1]))
        print(f"nodesim: {len(names)} nodes {done}", file=sys.stderr, flush=True)
        _print_json({done: names})
    elif words:
        text = f"nodesim: unknown command {line!r}: say 'vanish K', 'freeze K' or 'stats'"
        print(text, file=sys.stderr, flush=True)


def serve(sim: NodeSim, args: argparse.Namespace) -> None:
    """Print the stats every --stats-interval and obey stdin's lines, until interrupted."""
    sim.start()
    started = time.monotonic()
    try:
        _serve_until_interrupted(sim, args, started)
    except KeyboardInterrupt:  # the figures at the end
        with contextlib.suppress(SimError):
            _progress(sim.stats(timeout=2.0), time.monotonic() - started, args)


def _serve_until_interrupted(sim: NodeSim, args: argparse.Namespace, started: float) -> None:
    due = started + args.stats_interval
    watched = [0]  # stdin, until it ends
    pending = b""
    while True:
        timeout = max(0.0, due - time.monotonic())
        ready, _, _ = select.select(watched, [], [], timeout)
        if ready:
            data = os.read(0, 4096)
            if not data:
                watched = []
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                _on_line(sim, line.decode(errors="replace"), started)
        now = time.monotonic()
        if now >= due:
            _progress(sim.stats(), now - started, args)
            due = max(due + args.stats_interval, now)


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        sys.exit(serve_worker(args.worker))
    sim = NodeSim(
        args.broker,
        args.nodes,
        args.processes,
        args.functions,
        capacity=args.capacity,
        prefetch=args.prefetch,
        stagger=args.stagger,
        name_prefix=args.name_prefix,
        vanish_on_exit=args.vanish_on_exit,
        sndhwm=args.sndhwm,
        rcvhwm=args.rcvhwm,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        serve(sim, args)
    except KeyboardInterrupt:
        pass  # while starting
    except (SimError, ValueError) as exc:
        print(f"nodesim: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sim.close()
    sys.exit(code)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's docstring as written, and every option's default in its help."""


def _functions(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or not all(len(name) <= 256 for name in names):
        raise argparse.ArgumentTypeError("a comma-separated list of function names")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/nodesim.py", description=__doc__, formatter_class=HelpFormatter
    )
    add = parser.add_argument
    add("--broker", default="tcp://127.0.0.1:5000", metavar="URL", help="the broker's address")
    add("--nodes", type=int, default=1000, metavar="N", help="simulated nodes in all")
    add("--processes", type=int, default=2, metavar="P", help="worker processes serving them")
    text = "the functions each node registers (noop, multiply and sleep are simulated)"
    default = ",".join(DEFAULT_FUNCTIONS)
    add("--functions", type=_functions, default=default, metavar="LIST", help=text)
    add("--capacity", type=int, default=1, metavar="N", help="slots each node registers")
    text = "tasks each node asks to hold beyond its slots (REGISTER prefetch)"
    add("--prefetch", type=int, default=0, metavar="N", help=text)
    text = "seconds over which the nodes' first connects are spread (0: all at once)"
    add("--stagger", type=float, default=0.0, metavar="S", help=text)
    text = "node names are PREFIX-WORKER-I"
    add("--name-prefix", default="sim", metavar="PREFIX", help=text)
    text = "seconds between progress lines (stderr) and JSON lines (stdout, with --json)"
    add("--stats-interval", type=float, default=1.0, metavar="S", help=text)
    add("--json", action="store_true", help="a JSON stats object on stdout every interval")
    text = "at SIGINT or SIGTERM, close the sockets without DEREGISTER (the nodes vanish)"
    add("--vanish-on-exit", action="store_true", help=text)
    add("--sndhwm", type=int, metavar="N", help="ZMQ_SNDHWM of the nodes' sockets")
    add("--rcvhwm", type=int, metavar="N", help="ZMQ_RCVHWM of the nodes' sockets")
    add("--version", action="version", version=f"tools/nodesim.py {package_version()}")
    add("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        if args.nodes < 1 or args.processes < 1 or args.capacity < 1 or args.prefetch < 0:
            parser.error("--nodes, --processes and --capacity must be at least 1")
        if args.stagger < 0 or args.stats_interval <= 0:
            parser.error("--stagger must be 0 or more and --stats-interval above 0")
        try:
            check_url(args.broker)
        except ValueError as exc:
            parser.error(str(exc))
    return args


if __name__ == "__main__":
    main()
