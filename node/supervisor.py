"""`znode --concurrency N`: N node processes, so CPU-bound Python functions use N cores.

Each child is a whole node (its own DEALER connection and registration, named NAME.K), run
as `python -m node.cli ... --concurrency 1`. The supervisor forwards SIGINT/SIGTERM once
(children run in their own session so a terminal's Ctrl-C does not reach them twice),
restarts a child that dies, and exits when all children have stopped. Children die with
the supervisor (PR_SET_PDEATHSIG on Linux, and a parent check in their loop elsewhere).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from node.agent import NodeConfig

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 5.0
SETUP_ERROR = 2  # a child's exit code when it cannot start; restarting will not help


@dataclass(frozen=True)
class ChildOptions:
    """What every child is told besides its NodeConfig."""

    log_level: str = "INFO"
    log_file: str | None = None


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float


def _command(config: NodeConfig, options: ChildOptions, index: int) -> list[str]:
    argv = [sys.executable, "-m", "node.cli", "--concurrency", "1"]
    for function_set in config.function_sets:
        argv += ["--functions", function_set]
    argv += ["--broker", config.broker_url, "--name", f"{config.name}.{index}"]
    argv += ["--threads", str(config.threads), "--log-level", options.log_level]
    argv += ["--heartbeat-interval", str(config.heartbeat_interval)]
    argv += ["--parent-pid", str(os.getpid())]
    if options.log_file:
        argv += ["--log-file", options.log_file]
    return argv


class Supervisor:
    def __init__(self, config: NodeConfig, options: ChildOptions) -> None:
        self._config = config
        self._options = options
        self._children: dict[int, _Child] = {}
        self._restart_at: dict[int, float] = {}
        self._backoff: dict[int, float] = {}  # next restart delay of a child that dies young
        self._stops = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def run(self) -> int:
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
        old = {sig: signal.signal(sig, _note) for sig in handled}
        try:
            for index in range(self._config.concurrency):
                self._spawn(index)
            log.info(
                "supervising %d node processes named %s.0..%d",
                self._config.concurrency,
                self._config.name,
                self._config.concurrency - 1,
            )
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for child in self._children.values():
                child.process.kill()
                child.process.wait()

    def _spawn(self, index: int) -> None:
        command = _command(self._config, self._options, index)
        process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
        self._children[index] = _Child(index, process, time.monotonic())

    def _loop(self) -> int:
        exit_code = 0
        while self._children or (self._restart_at and not self._stops):
            select.select([self._wake_r], [], [], self._wait_time())
            for signum in self._drain_wakeups():
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self._on_stop()
            exit_code = max(exit_code, self._reap())
            self._restart_due()
        return 130 if self._stops > 1 else exit_code

    def _wait_time(self) -> float:
        if not self._restart_at:
            return 1.0
        return max(0.0, min(self._restart_at.values()) - time.monotonic())

    def _drain_wakeups(self) -> bytes:
        try:
            return self._wake_r.recv(256)
        except BlockingIOError:
            return b""

    def _on_stop(self) -> None:
        self._stops += 1
        self._restart_at.clear()
        signum = signal.SIGTERM if self._stops == 1 else signal.SIGINT
        for child in self._children.values():
            # A child's second signal makes it exit at once, as a second Ctrl-C should.
            for _ in range(self._stops if signum == signal.SIGINT else 1):
                child.process.send_signal(signum)

    def _reap(self) -> int:
        worst = 0
        for index, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[index]
            if self._stops:
                worst = max(worst, code if code > 0 else 0)
            elif code == SETUP_ERROR:
                log.error("node process %d cannot start (see its error above); stopping", index)
                self._on_stop()
                worst = SETUP_ERROR
            else:
                self._schedule_restart(child, code)
        return worst

    def _schedule_restart(self, child: _Child, code: int) -> None:
        # A child that crashes right after starting is restarted ever more slowly.
        if time.monotonic() - child.started < 10:
            delay = self._backoff.get(child.index, 0.1)
            self._backoff[child.index] = min(delay * 2, RESTART_BACKOFF_MAX)
        else:
            delay = 0.0
            self._backoff.pop(child.index, None)
        log.warning(
            "node process %s.%d exited with %s; restarting in %.1f s",
            self._config.name,
            child.index,
            code,
            delay,
        )
        self._restart_at[child.index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self._restart_at.items()):
            if when <= now and not self._stops:
                del self._restart_at[index]
                self._spawn(index)


def _note(signum: int, frame: FrameType | None) -> None:
    """The wakeup fd carries the signal number to the loop."""


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its supervisor dies; no-op elsewhere."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)
