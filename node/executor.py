"""A node process's slots: InlineSlot (one task at a time, in the socket thread) or
ThreadSlots (threads that run functions beside the socket thread).

The agent's thread owns the DEALER to the broker and never runs a function, so heartbeats
keep flowing while a CPU-bound function holds the GIL (the interpreter hands the GIL over at
least every switch interval, 5 ms by default). Running the function in the process that
holds the broker connection keeps a task to four socket hops (client, broker, node, broker,
client); a separate slot process would add two more and double the round trip. CPU
parallelism comes from running several node processes (`znode --concurrency N`).

Results come back on a deque; one wake-up byte per batch tells the socket thread (no
socket per thread, no frames copied through inproc).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from broker.protocol import Result, batches, encode
from node import runner
from node.registry import Function

log = logging.getLogger(__name__)

_STOP = ("", "", b"")


def combine_results(results: list[list[bytes]]) -> list[list[bytes]]:
    """RESULT messages each carrying several results (protocol.md 2.4): one message for many
    results saves a wake-up per task."""
    return [_joined(batch) for batch in batches(results, _payload_size)]


def _joined(messages: list[list[bytes]]) -> list[bytes]:
    frames = list(messages[0])
    for message in messages[1:]:
        frames += message[2:4]
    return frames


def _payload_size(frames: list[bytes]) -> int:
    return len(frames[3])


class ThreadSlots:
    """`threads` slot threads fed from one queue. A finished task's RESULT frames go on a
    deque, and `notify()` wakes the socket thread once per batch (not once per result):
    the socket thread then calls `take_results()`."""

    socket = None

    def __init__(
        self, functions: Mapping[str, Function], threads: int, notify: Callable[[], None]
    ) -> None:
        self._functions = dict(functions)
        self._notify = notify
        self._jobs: queue.SimpleQueue[tuple[str, str, bytes]] = queue.SimpleQueue()
        self._done: deque[tuple[str, list[bytes]]] = deque()
        self._notified = False  # a wake-up is on its way and not yet acted on
        self._threads = [
            threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True)
            for i in range(threads)
        ]
        self.running: set[str] = set()  # task ids handed to a slot and not yet answered

    @property
    def capacity(self) -> int:
        return len(self._threads)

    @property
    def free_count(self) -> int:
        return len(self._threads) - len(self.running)

    @property
    def busy(self) -> int:
        return len(self.running)

    @property
    def idle(self) -> bool:
        """Whether every slot thread has stopped (after close)."""
        return not any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, task_id: str, function: str, payload: bytes) -> None:
        self.running.add(task_id)
        self._jobs.put((task_id, function, payload))

    def take_results(self) -> list[list[bytes]]:
        """RESULT messages for every task finished so far (several tasks per message, see
        `combine_results`); frees their slots."""
        self._notified = False  # before draining: a result added after this notifies again
        taken = []
        done, running = self._done, self.running
        while done:
            task_id, frames = done.popleft()
            running.discard(task_id)
            taken.append(frames)
        return combine_results(taken)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the slot threads, waiting at most `timeout` in all; a thread still inside a
        function is left behind (a daemon: it dies with the process)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _slot(self) -> None:
        functions, jobs, done = self._functions, self._jobs, self._done
        while True:
            task_id, function, payload = jobs.get()
            if not task_id:
                return
            outcome = runner.run_task(functions, function, payload)
            result = Result(task_id, outcome.exit_code, outcome.payload, outcome.error)
            done.append((task_id, encode(result)))
            if not self._notified:
                self._notified = True
                self._notify()


class InlineSlot:
    """One slot run by the socket thread itself (`--threads 1`): no hand-off per task.

    The socket thread holds `lock` whenever it is not inside a function. While a function
    runs, a watchdog thread may take the lock and call `keep_alive` to use the socket:
    ZeroMQ allows a socket to move between threads across a full memory barrier, which the
    lock provides, and only one thread touches it at a time. So heartbeats keep flowing and
    a stop signal deregisters at once even during a long CPU-bound call.
    """

    socket = None
    capacity = 1

    def __init__(
        self,
        functions: Mapping[str, Function],
        keep_alive: Callable[[], None],
        period: Callable[[], float],
    ) -> None:
        self._functions = dict(functions)
        self._keep_alive = keep_alive
        self._period = period
        self.lock = threading.Lock()
        self._since: float | None = None  # when the running function started
        self._wake = threading.Event()
        self._stopped = False
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    @property
    def busy(self) -> int:
        return 0 if self._since is None else 1

    @property
    def free_count(self) -> int:
        return 1 - self.busy

    @property
    def idle(self) -> bool:
        return self._since is None

    def start(self) -> None:
        self.lock.acquire()
        self._watchdog.start()

    def run(self, task_id: str, function: str, payload: bytes) -> list[bytes]:
        """Run one task now; the RESULT frames."""
        self._since = time.monotonic()
        self.lock.release()
        try:
            outcome = runner.run_task(self._functions, function, payload)
        finally:
            self.lock.acquire()
            self._since = None
        return encode(Result(task_id, outcome.exit_code, outcome.payload, outcome.error))

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
            self._wake.wait(self._period() / 4)
            self._wake.clear()
            if self._since is None or self._stopped or not self.lock.acquire(blocking=False):
                continue
            try:
                if self._since is not None:  # still inside the function: the socket is ours
                    self._keep_alive()
            finally:
                self.lock.release()
