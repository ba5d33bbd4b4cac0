"""The node agent: registers with the broker, hands RUN to slot threads and RESULT back.

One thread owns everything socket-side: the DEALER to the broker, the PULL its slot threads
answer on and a wakeup fd for signals, all in one zmq.Poller, so a signal, a result or a
silent broker is handled as soon as it happens. Functions run in slot threads of this
process (node/executor.py); the agent never decodes task payloads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import zmq

from broker.protocol import (
    DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS,
    ERR_MALFORMED,
    ERR_NOT_REGISTERED,
    Batch,
    Deregister,
    Disconnect,
    Error,
    Heartbeat,
    ProtocolError,
    Register,
    Registered,
    Run,
    decode,
    encode,
)
from node import registry
from node.executor import InlineSlot, ThreadSlots
from node.link import NOBLOCK, BrokerLink, readable, recv_frames

log = logging.getLogger(__name__)

DRAIN_BATCH = 256  # messages read per socket before the others get a turn
STOP_BYTES = frozenset({0, signal.SIGINT, signal.SIGTERM})
RESULTS_READY = b"\xff"  # on the wake-up socket: slot threads finished tasks


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class NodeConfig:
    """How to run a node (the options of `znode`)."""

    function_sets: tuple[str, ...]
    broker_url: str = DEFAULT_BROKER_URL
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes
    threads: int = 1  # slot threads per process: the capacity each process registers
    name: str = field(default_factory=default_name)
    # Used only until the broker's REGISTERED says otherwise.
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    liveness: int = DEFAULT_LIVENESS
    parent_pid: int | None = None  # a supervised node stops when its supervisor is gone


class NodeAgent:
    """The node's main loop. `run()` blocks until the node stops and gives its exit code."""

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        functions = registry.resolve(config.function_sets)
        self._functions = tuple(sorted(functions))
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._poller = zmq.Poller()
        self._link = BrokerLink(
            self._context,
            self._poller,
            config.broker_url,
            config.heartbeat_interval,
            config.liveness,
        )
        self._pool: InlineSlot | ThreadSlots
        if config.threads == 1:
            self._pool = InlineSlot(functions, self._keep_alive, lambda: self._link.interval)
        else:
            self._pool = ThreadSlots(functions, config.threads, self._results_ready)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._poller.register(self._wake_fd, zmq.POLLIN)
        self._unsent: list[list[bytes]] = []  # RESULT frames waiting for a registration
        self._queued: deque[Run] = deque()  # RUNs that found no free slot
        self._stopping = False
        self._stop_asked = False  # a signal or request_stop() arrived (read by the watchdog)
        self._deregistered = False
        self._exit_code: int | None = None
        self.malformed = 0  # messages from the broker that could not be decoded

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until stopped; 0 after a clean stop, 130 after a second stop request."""
        restore = self._install_signals()
        try:
            self._pool.start()
            log.info(
                "node %s: %d slots ready for %d functions (%s); broker %s",
                self._config.name,
                self._pool.capacity,
                len(self._functions),
                ", ".join(self._config.function_sets),
                self._config.broker_url,
            )
            self._connect()
            while self._exit_code is None:
                self._step()
            return self._exit_code
        finally:
            restore()
            self._close()

    def request_stop(self) -> None:
        """Stop like SIGTERM does (safe from any thread); a second call stops at once."""
        self._note_stop(signal.SIGTERM, None)
        with contextlib.suppress(OSError):  # closed: the agent has stopped already
            self._wake_w.send(b"\0")

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals reach only the main thread; use request_stop()
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, self._note_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def _note_stop(self, signum: int, frame: FrameType | None) -> None:
        """The wakeup fd brings the stop to the loop; a function running inline delays the
        loop, so the watchdog is told too and deregisters at once."""
        self._stop_asked = True
        if isinstance(self._pool, InlineSlot):
            self._pool.poke()

    def _keep_alive(self) -> None:
        """Called by the InlineSlot watchdog, holding the socket, while a function runs."""
        if self._link.socket is None or not self._link.registered:
            return
        if self._stop_asked and not self._deregistered:
            self._deregister()
        elif time.monotonic() - self._link.last_sent >= self._link.interval:
            self._link.send(encode(Heartbeat()))

    def _deregister(self) -> None:
        self._deregistered = True
        self._link.send(encode(Deregister()))

    def _close(self) -> None:
        self._pool.close(timeout=0.0 if self._exit_code == 130 else 1.0)
        self._link.close(clean=self._exit_code != 130)
        self._wake_r.close()
        self._wake_w.close()
        if self._pool.idle:
            self._context.term()
        # else a slot thread is still inside a function and holds its socket: term() would
        # wait for it forever; the process is about to exit anyway.

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        for item, _ in self._poller.poll(self._poll_timeout()):
            if item is self._link.socket and self._link.socket is not None:
                self._drain_broker(self._link.socket)
            elif item == self._wake_fd:
                self._on_wakeup()
        self._tick(time.monotonic())

    def _poll_timeout(self) -> int:
        due = self._link.due(self._stopping)
        if due == float("inf"):
            return 1000
        return max(0, int((due - time.monotonic()) * 1000) + 1)

    def _tick(self, now: float) -> None:
        parent = self._config.parent_pid
        if parent is not None and os.getppid() != parent:
            log.error("supervisor %d is gone; stopping at once", parent)
            self._exit_code = 1
        elif self._stopping and self._pool.busy == 0 and not self._queued:
            self._finish()
        elif self._link.socket is None:
            if not self._stopping and now >= self._link.connect_at:
                self._connect()
        elif not self._link.registered:
            if now >= self._link.register_deadline:
                self._link.retry()
        elif now - self._link.last_heard >= self._link.expiry:
            silent = now - self._link.last_heard
            self._link.reconnect(f"broker at {self._link.url} silent for {silent:.1f} s")
        elif self._unsent:
            self._flush_unsent()
        elif now - self._link.last_sent >= self._link.interval:
            self._link.send(encode(Heartbeat()))

    def _finish(self) -> None:
        if self._unsent:
            log.warning(
                "stopping with %d result(s) the broker never got; it will run those tasks again",
                len(self._unsent),
            )
        log.info("node %s stopped", self._config.name)
        self._exit_code = 0

    def _connect(self) -> None:
        name, functions, capacity = self._config.name, self._functions, self._pool.capacity
        self._link.connect(Register(name, socket.gethostname(), os.getpid(), functions, capacity))

    # ------------------------------------------------------------------ from the broker

    def _drain_broker(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            # Any message is a sign of life; stamped per message, since a RUN run inline
            # may take long while more messages wait behind it.
            self._link.last_heard = time.monotonic()
            try:
                if frames[0]:
                    raise ProtocolError(ERR_MALFORMED, "missing the empty delimiter frame")
                msg = decode(frames[1:])
            except (ProtocolError, IndexError) as exc:
                self._on_malformed(exc)
                continue
            if type(msg) is Run:
                self._on_run(msg)
            elif type(msg) is Batch:
                self._on_runs(msg)
            else:
                self._on_control(msg)
            if self._link.socket is not sock or not readable(sock):
                return  # done, or the message made us drop this socket

    def _on_malformed(self, exc: Exception) -> None:
        self.malformed += 1
        log.warning(
            "ignoring a malformed message from the broker (%d so far): %s", self.malformed, exc
        )

    def _on_control(self, msg: object) -> None:
        if isinstance(msg, Registered):
            self._on_registered(msg)
        elif isinstance(msg, Disconnect):
            reason = msg.reason or "no reason given"
            self._link.reconnect(f"broker at {self._link.url} disconnected us ({reason})")
        elif isinstance(msg, Error) and msg.code == ERR_NOT_REGISTERED:
            self._link.reconnect(f"broker at {self._link.url} does not know us")
        elif isinstance(msg, Error):
            log.warning("broker reported error %s: %s", msg.code, msg.message)
        elif not isinstance(msg, Heartbeat):
            self._on_malformed(ValueError(f"unexpected {type(msg).__name__} for a node"))

    def _on_registered(self, msg: Registered) -> None:
        self._link.on_registered(msg)
        self._flush_unsent()

    def _on_runs(self, batch: Batch) -> None:
        for item in batch.items:
            if type(item) is Run:
                self._on_run(item)
            else:
                self._on_malformed(ValueError(f"a batch from the broker holds {item!r}"))

    def _on_run(self, msg: Run) -> None:
        if isinstance(self._pool, InlineSlot):
            self._send_result(self._pool.run(msg.task_id, msg.function, msg.payload))
        elif self._queued or not self._pool.free_count:
            if not self._queued:  # once per backlog, not per task
                log.warning(
                    "no free slot for task %s (a slot is restarting, or the broker sent more "
                    "than the capacity): holding tasks until slots free up",
                    msg.task_id,
                )
            self._queued.append(msg)
        else:
            self._pool.submit(msg.task_id, msg.function, msg.payload)

    # ------------------------------------------------------------------ from the slots

    def _results_ready(self) -> None:
        """Called by a slot thread: wake the socket thread (once per batch of results)."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: done
            self._wake_w.send(RESULTS_READY)

    def _collect_results(self) -> None:
        assert isinstance(self._pool, ThreadSlots)
        for frames in self._pool.take_results():
            self._send_result(frames)
        while self._queued and self._pool.free_count:
            run = self._queued.popleft()
            self._pool.submit(run.task_id, run.function, run.payload)

    def _send_result(self, frames: list[bytes]) -> None:
        if not self._link.registered or self._unsent or not self._link.send(frames):
            self._unsent.append(frames)

    def _flush_unsent(self) -> None:
        while self._unsent and self._link.send(self._unsent[0]):
            self._unsent.pop(0)

    # ------------------------------------------------------------------ stopping

    def _on_wakeup(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for byte in data:
            if byte in STOP_BYTES:
                self._on_stop_request()
        if RESULTS_READY[0] in data:
            self._collect_results()

    def _on_stop_request(self) -> None:
        if self._stopping:
            log.warning("second stop request: exiting now without waiting for running tasks")
            self._exit_code = 130
            return
        self._stopping = True
        log.info("stopping: no new tasks; waiting for %d running task(s)", self._pool.busy)
        if not self._link.registered:
            self._link.drop(0.0)
        elif not self._deregistered:
            self._deregister()


def serve(config: NodeConfig) -> int:
    """Run a node until it is stopped; its exit code. Raises NodeSetupError if it cannot start."""
    return NodeAgent(config).run()
