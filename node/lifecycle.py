"""How a node process comes to an end: an operator's stop (SIGTERM, SIGINT or
`request_stop()`: no new work, finish the running tasks; a second one: at once), or a restart
after a task passed its task timeout (no new work, the other tasks get RESTART_DRAIN seconds).
Pure state and the signal plumbing; the agent acts on it."""

from __future__ import annotations

import math
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType

# How long a process restarting for an overdue task lets its other running tasks finish; those
# still running then are failed by the broker (exit 70) when the next process registers.
RESTART_DRAIN = 5.0

Handler = Callable[[int, FrameType | None], None]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Bytes on the node's wake-up socket that mean "stop": a stop signal's number (written by
# Python's C-level handler) or 0 (`NodeAgent.request_stop`).
STOP_BYTES = frozenset({0, *STOP_SIGNALS})


def leave_stop_signals_to_main() -> None:
    """Block SIGINT/SIGTERM in the calling thread: the inline watchdog's, which runs no task
    (a subprocess started by a task would inherit the mask). The kernel hands a signal sent
    to the process to any thread that does not block it; Python runs the handler in the main
    thread only, between bytecodes, so a stop taken by another thread would not interrupt the
    function the main thread runs inline (a `time.sleep(4)`, say)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def stop_signalled(wake_r: socket.socket) -> bool:
    """Whether a stop signal's number waits on the wake-up socket, unread (a peek). For the
    inline watchdog: a thread other than the main one (a task's, a lent slot's) may take a
    stop signal, whose handler then waits for the main thread to leave its function; the
    number is on the wake-up socket at once, written by whichever thread took it."""
    try:
        data = wake_r.recv(4096, socket.MSG_PEEK)
    except OSError:  # nothing waits (BlockingIOError), or closed
        return False
    return any(byte in STOP_BYTES for byte in data)


def install_stop_signals(wake_fd: int, handler: Handler) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to `handler` and their numbers to `wake_fd`; the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach only the main thread; use request_stop()
    old_fd = signal.set_wakeup_fd(wake_fd, warn_on_full_buffer=False)
    old = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore() -> None:
        signal.set_wakeup_fd(old_fd)
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


class Lifecycle:
    def __init__(self) -> None:
        self.stopping = False  # no new work: a stop was asked, or a restart is under way
        self.asked = False  # a stop signal arrived (set in the handler, read by the watchdog)
        self.stops = 0  # stop requests the loop has handled
        self.restart_reason: str | None = None  # why the process restarts: a task was overdue
        self.restart_by = math.inf  # when a restarting process stops waiting for its tasks

    @property
    def restarting(self) -> bool:
        """Whether the process ends by asking to be restarted (an operator's stop wins)."""
        return self.restart_reason is not None and not self.stops

    def stop_requested(self) -> bool:
        """Count a stop request; True if it is the second, which means: exit at once."""
        self.stops += 1
        self.stopping = True
        return self.stops > 1

    def begin_restart(self, reason: str, now: float) -> bool:
        """Note that a task passed its task timeout; True the first time only."""
        if self.restart_reason is not None:
            return False
        self.restart_reason, self.restart_by = reason, now + RESTART_DRAIN
        self.stopping = True
        return True

    def drained(self, busy: int, now: float) -> bool:
        """Whether a stopping process may end: no task left, or a restart waited enough (an
        operator's stop waits for every task)."""
        return busy == 0 or (self.restarting and now >= self.restart_by)
