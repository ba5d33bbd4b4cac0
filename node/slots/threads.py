"""ThreadSlots: the slot threads that run functions beside the socket thread (`--threads T`
with T > 1; node/slots/inline.py has the one-slot case).

The agent's thread owns the DEALER to the broker and never runs a function, so heartbeats
keep flowing while a CPU-bound function holds the GIL (the interpreter hands the GIL over at
least every switch interval, 5 ms by default). Running the function in the process that
holds the broker connection keeps a task to four socket hops (client, broker, node, broker,
client); a separate slot process would add two more and double the round trip. CPU
parallelism comes from running several node processes (`znode --concurrency N`).

Results come back on a deque; one wake-up per batch tells the socket thread (no socket per
thread, no frames copied through inproc).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from broker.protocol import Run, batches, encode_packed_frames
from node import runner
from node.context import runs_tasks
from node.registry import Function
from node.slots.cancelled import CancelledTasks
from node.slots.deadlines import TaskDeadlines

log = logging.getLogger(__name__)

_STOP = Run("", "", b"")  # tells a slot thread to end


def combine_results(results: list[list[bytes]], packed: bool = False) -> list[list[bytes]]:
    """RESULT messages each carrying several results (protocol.md 2.4; in the packed form,
    2.5, for a broker that takes it): one message for many results saves a wake-up per
    task, and the packed form a frame per result too."""
    join = encode_packed_frames if packed else _joined
    return [join(batch) if len(batch) > 1 else batch[0] for batch in batches(results, _result_size)]


def _joined(messages: list[list[bytes]]) -> list[bytes]:
    frames = list(messages[0])
    for message in messages[1:]:
        frames += message[2:4]
    return frames


def _result_size(frames: list[bytes]) -> int:
    return len(frames[3])


class ThreadSlots:
    """`threads` slot threads fed from one queue. A finished task's RESULT frames go on a
    deque, and `notify()` wakes the socket thread once per batch (not once per result):
    the socket thread then calls `take_results()`.

    Everything but `_slot` is called by the socket thread only."""

    def __init__(
        self, functions: Mapping[str, Function], threads: int, notify: Callable[[], None]
    ) -> None:
        self._functions = dict(functions)
        self._notify = notify
        self._jobs: queue.SimpleQueue[Run] = queue.SimpleQueue()
        self._done: deque[tuple[str, list[bytes]]] = deque()
        self._notified = False  # a wake-up is on its way and not yet acted on
        self._threads = [
            threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True)
            for i in range(threads)
        ]
        self._slots = threads  # the slots it registers; more threads while tasks wait
        self.running: dict[str, Run] = {}  # tasks handed to a slot and not yet answered
        # Answered already (overdue or cancelled), their threads still inside the function.
        self._abandoned: set[str] = set()
        self._backlog: deque[Run] = deque()  # RUNs held until a slot frees (prefetch)
        self._deadlines = TaskDeadlines()  # of the running tasks that have a task timeout

    @property
    def capacity(self) -> int:
        return self._slots

    @property
    def free_count(self) -> int:
        return len(self._threads) - len(self.running) - len(self._abandoned)

    @property
    def busy(self) -> int:
        """Tasks running or waiting for a slot (not those answered already)."""
        return len(self.running) + len(self._backlog)

    @property
    def held(self) -> int:
        return len(self._backlog)

    runnable = False  # the slot threads run every task
    notifies = True  # results come from the slot threads, through `results_ready`

    @property
    def next_deadline(self) -> float:
        return self._deadlines.next_due

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, run: Run) -> None:
        """Start the task in a free slot, or hold it until one frees up (in order); its
        result comes from `take_results`."""
        if self._backlog or self.free_count <= 0:
            self._backlog.append(run)
        else:
            self._start(run)

    def lend(self, task_id: str) -> bool:
        """The running task `task_id` waits for other tasks: one more slot thread runs tasks
        meanwhile (protocol.md 5.9). False if that task does not run here."""
        if task_id not in self.running:
            return False
        thread = threading.Thread(target=self._slot, name="lent-slot", daemon=True)
        self._threads.append(thread)
        thread.start()
        while self._backlog and self.free_count > 0:
            self._start(self._backlog.popleft())
        return True

    def reclaim(self, task_id: str) -> bool:
        """The task goes on: one slot thread ends, once it has taken this message."""
        if len(self._threads) <= self._slots:
            return False
        self._threads.pop()
        self._jobs.put(_STOP)
        return True

    def started(self) -> list[Run]:
        return list(self.running.values())

    def held_runs(self) -> list[Run]:
        return list(self._backlog)

    def retract(self, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        wanted = set(task_ids)
        kept = deque(run for run in self._backlog if run.task_id not in wanted)
        given = {run.task_id for run in self._backlog} - {run.task_id for run in kept}
        self._backlog = kept
        returned = [task_id for task_id in task_ids if task_id in given]
        return returned, [task_id for task_id in task_ids if task_id not in given]

    def cancel(self, task_ids: Sequence[str]) -> CancelledTasks:
        """Forget the held tasks among `task_ids`; the running ones are answered by the
        caller, and their slots stay taken until their functions return."""
        wanted = set(task_ids)
        held = [run for run in self._backlog if run.task_id in wanted]
        if held:
            self._backlog = deque(run for run in self._backlog if run.task_id not in wanted)
        asked = dict.fromkeys(task_ids)  # in the order asked, once each
        running = [self.running[task_id] for task_id in asked if task_id in self.running]
        self._abandon(running)
        return CancelledTasks(held, running)

    def drop_held(self) -> int:
        count = len(self._backlog)
        self._backlog.clear()
        return count

    def run_next(self, flush_at: float = math.inf) -> list[bytes]:
        raise AssertionError("slot threads run their tasks themselves: nothing is runnable")

    def _start(self, run: Run) -> None:
        self.running[run.task_id] = run
        self._jobs.put(run)
        if run.task_timeout is not None:  # the deadline counts from the start, not the RUN
            self._deadlines.add(run, time.monotonic())

    def take_results(self) -> list[list[bytes]]:
        """The RESULT frames of every task finished so far (the caller puts several in one
        message: `combine_results`); frees their slots for tasks held back."""
        self._notified = False  # before draining: a result added after this notifies again
        taken = []
        done, running, abandoned = self._done, self.running, self._abandoned
        while done:
            task_id, frames = done.popleft()
            if abandoned and task_id in abandoned:
                abandoned.discard(task_id)  # its slot is free again; it was answered already
                continue
            running.pop(task_id, None)
            taken.append(frames)
        while self._backlog and self.free_count > 0:
            self._start(self._backlog.popleft())
        return taken

    def expire(self, now: float) -> list[Run]:
        """The running tasks past their task timeout. They count as answered from now on
        (the caller answers them); their slots stay taken until their functions return."""
        late = self._deadlines.expired(now, self.running)
        self._abandon(late)
        return late

    def _abandon(self, runs: list[Run]) -> None:
        """These running tasks are answered by the caller: their results are dropped."""
        for run in runs:
            del self.running[run.task_id]
            self._abandoned.add(run.task_id)

    def poke(self) -> None:
        """Nothing to do: the socket thread never runs a function, so it sees a stop itself."""

    def close(self, wait: float) -> None:
        """Stop the slot threads, waiting at most `wait` seconds in all; a thread still inside
        a function is left behind (a daemon: it dies with the process)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _slot(self) -> None:
        functions, jobs, done, current = self._functions, self._jobs, self._done, runs_tasks()
        while True:
            run = jobs.get()
            if run is _STOP:
                return
            current.run = run
            outcome = (
                runner.run_task(functions, run.function, run.args, run.inputs)
                if run.traceparent is None
                else runner.run_traced(functions, run)
            )
            current.run = None
            frames = runner.result_of(run, outcome)
            done.append((run.task_id, frames))
            if not self._notified:
                self._notified = True
                self._notify()
