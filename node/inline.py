"""InlineSlot: the one slot of a `--threads 1` node process, run by the socket thread itself
(no hand-off per task: the fastest path), and its watchdog thread."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from broker.protocol import Run, result_frames
from node import runner
from node.registry import Function


class InlineSlot:
    """One slot run by the socket thread itself (`--threads 1`): no hand-off per task.

    The socket thread holds `lock` whenever it is not inside a function. While a function
    runs, a watchdog thread may take the lock and use the socket: ZeroMQ allows a socket to
    move between threads across a full memory barrier, which the lock provides, and only one
    thread touches it at a time. So heartbeats keep flowing and a stop signal deregisters at
    once even during a long CPU-bound call, and a task's timeout is enforced.

    The watchdog sleeps until the next heartbeat would be due or the running task's deadline
    passes, whichever comes first. A task without a timeout does not wake it; a task with one
    wakes it only when its deadline comes before the watchdog's next wake-up anyway.
    """

    socket = None
    capacity = 1

    def __init__(
        self,
        functions: Mapping[str, Function],
        keep_alive: Callable[[], None],
        next_heartbeat: Callable[[], float],
        on_timeout: Callable[[Run], None],
    ) -> None:
        self._functions = dict(functions)
        self._keep_alive = keep_alive
        self._next_heartbeat = next_heartbeat
        self._on_timeout = on_timeout
        self.lock = threading.Lock()
        # Written by the socket thread holding the lock, before it enters the function.
        self._running: Run | None = None  # the task inside its function
        # The deadline of the latest task with a timeout: the running task's if it has one.
        # Kept after that task ends, so the watchdog, looking between two tasks, still sleeps
        # until about when the next one's deadline will be (no wake-up per task).
        self._deadline = math.inf
        self._wake_at = -math.inf  # when the watchdog wakes by itself next
        self._wake = threading.Event()
        self._stopped = False
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    @property
    def busy(self) -> int:
        return 0 if self._running is None else 1

    @property
    def free_count(self) -> int:
        return 1 - self.busy

    def start(self) -> None:
        self.lock.acquire()
        self._watchdog.start()

    def run(self, msg: Run) -> list[bytes]:
        """Run one task now; the RESULT frames."""
        if msg.timeout is None:
            self._running = msg
        else:
            self._deadline = deadline = time.monotonic() + msg.timeout
            self._running = msg  # after its deadline: a timed task is seen with its own
            if deadline < self._wake_at:
                self._wake.set()
        self.lock.release()
        try:
            outcome = runner.run_task(self._functions, msg.function, msg.payload)
        finally:
            self.lock.acquire()
            self._running = None
        return result_frames(msg.task_id, outcome.exit_code, outcome.payload, outcome.error)

    def poke(self) -> None:
        """Let the watchdog act now (a stop was requested). Safe from a signal handler."""
        self._wake.set()

    def close(self, timeout: float = 1.0) -> None:
        self._stopped = True
        self._wake.set()
        self._watchdog.join(timeout)
        if self.lock.locked():
            self.lock.release()

    def _watch(self) -> None:
        while not self._stopped:
            # Published before the deadline is read: a task that starts meanwhile sees inf
            # and wakes us, so its deadline cannot be missed.
            self._wake_at = math.inf
            self._wake_at = wake_at = min(self._next_deadline(), self._next_heartbeat())
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            if not self._stopped:
                self._check()

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadline = self._deadline
        if deadline > now:
            return deadline
        running = self._running  # read after the deadline: see run()
        timed = running is not None and running.timeout is not None
        return now if timed else math.inf  # passed: act now if it is the running task's

    def _check(self) -> None:
        running = self._running
        if running is None or not self.lock.acquire(blocking=False):
            return  # no function running: the socket thread does it all
        try:
            if self._running is not running:
                return  # it finished and another started meanwhile: look again later
            if running.timeout is not None and time.monotonic() >= self._deadline:
                self._deadline = math.inf  # once, should the callback ever return
                self._on_timeout(running)  # answers 124 and ends the process
            else:
                self._keep_alive()
        finally:
            self.lock.release()
