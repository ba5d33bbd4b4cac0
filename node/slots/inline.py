"""InlineSlot: the one slot of a `--threads 1` node process, run by the socket thread itself
(no hand-off per task: the fastest path), and its watchdog thread."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from broker.protocol import Run
from node import runner
from node.context import Current, runs_tasks
from node.lifecycle import leave_stop_signals_to_main
from node.registry import Function
from node.slots.cancelled import CancelledTasks
from node.slots.deadlines import TaskDeadlines


class InlineSlot:
    """One slot run by the socket thread itself (`--threads 1`): no hand-off per task.

    The socket thread holds `lock` whenever it is not inside a function. While a function
    runs, a watchdog thread may take the lock and use the socket: ZeroMQ allows a socket to
    move between threads across a full memory barrier, which the lock provides, and only one
    thread touches it at a time. So heartbeats keep flowing and a stop signal deregisters at
    once even during a long CPU-bound call, and a task's task timeout is enforced.

    The tasks the broker sends wait in `held` (the prefetch window, protocol.md 5.5) until
    the socket thread runs them, oldest first (`run_next`); `retract` gives back those not
    started yet, and `cancel` drops them.

    The watchdog sleeps until the next heartbeat would be due, the running task's deadline
    passes, or results finished earlier are due to leave (`run_next`'s `flush_at`), whichever
    comes first. While tasks run it also looks at the socket every RUNNING_POLL seconds, so
    that a STOP for the running task is seen in time, and every HELD_POLL seconds while the
    slot holds tasks, so that a RETRACT is answered during a long call. It does not wake once
    per task: in a stream of tasks it is looking every RUNNING_POLL already, and a task with a
    task timeout wakes it only when its deadline comes before its next wake-up anyway; only
    the first task after a quiet spell wakes it.

    The watchdog itself acts on a task past its task timeout (`on_overdue`, which ends the
    process): the socket thread is inside that task's function, so the loop cannot. Hence
    `expire` never has a task to give and `next_deadline` is never due. A STOP for the
    running task, which the watchdog reads, likewise ends the process (`cancel`).
    """

    capacity = 1
    HELD_POLL = 0.05  # seconds between looks at the socket while a call runs and tasks wait
    # Seconds between looks at the socket while tasks run: a STOP is answered within a second
    # (protocol.md 3.20), and ending the process takes a few tens of milliseconds.
    RUNNING_POLL = 0.2

    def __init__(
        self,
        functions: Mapping[str, Function],
        keep_alive: Callable[[], None],
        next_heartbeat: Callable[[], float],
        on_overdue: Callable[[Run], None],
        results_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self._functions = dict(functions)
        self._results_ready = results_ready
        # Lent slots (protocol.md 5.9): while a task waits for other tasks, a helper thread
        # runs the held tasks in its place; their results wait in `_helped` for the socket.
        self._helpers = 0  # helper threads alive
        self._reclaims = 0  # helpers asked to end (their tasks went on)
        self._helping: dict[str, Run] = {}  # tasks a helper runs
        self._helped: deque[list[bytes]] = deque()  # their RESULTs, not sent yet
        self._help_deadlines = TaskDeadlines()  # of the tasks helpers run with a timeout
        self._overdue: set[str] = set()  # of those, answered 124 already: results dropped
        # The earliest deadline of a task a helper runs (the socket thread's loop asks, and
        # `expire` gives the task); the task inside `run_next` is the watchdog's affair.
        self.next_deadline = math.inf
        self._work = threading.Event()  # a task to help with came, or a helper must end
        # Whether results come from other threads too (through `results_ready`): from the
        # first lent slot on; until then every result is given by `run_next`.
        self.notifies = False
        self._keep_alive = keep_alive
        self._next_heartbeat = next_heartbeat
        self._on_overdue = on_overdue
        self.lock = threading.Lock()
        # Written by the socket thread holding the lock, before it enters the function.
        self._running: Run | None = None  # the task inside its function
        # The deadline of the latest task with a task timeout: the running task's if it has
        # one. Kept after that task ends, so the watchdog, looking between two tasks, still
        # sleeps until about when the next one's deadline will be (no wake-up per task).
        self._deadline = math.inf
        self._wake_at = -math.inf  # when the watchdog wakes by itself next
        self._started_at = -math.inf  # when the latest task started
        self._flush_at = math.inf  # when results finished before the running task must leave
        self._poked = False  # a stop was requested: act now
        self._held: dict[str, Run] = {}  # tasks waiting for the slot, oldest first
        self._help_lock = threading.Lock()  # guards `_helpers` and `_reclaims`
        self._wake = threading.Event()
        self._stopped = False
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._current = Current()  # the socket thread's, from `start`

    @property
    def busy(self) -> int:
        running = 0 if self._running is None else 1
        return len(self._held) + running + len(self._helping)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def runnable(self) -> bool:
        return bool(self._held)

    def start(self) -> None:
        """On the socket thread, which runs the tasks."""
        self._current = runs_tasks()
        self.lock.acquire()
        self._watchdog.start()

    def submit(self, run: Run) -> None:
        """Hold a task until `run_next` (or a helper, while a task waits) runs it."""
        self._held[run.task_id] = run
        if self._helpers:
            self._work.set()

    def lend(self, task_id: str) -> bool:
        """The running task `task_id` waits for other tasks: a helper thread runs the held
        tasks meanwhile. Called holding `lock` (the socket). False if that task does not run
        here."""
        running = self._running
        if task_id not in self._helping and (running is None or running.task_id != task_id):
            return False
        with self._help_lock:
            self._helpers += 1
        self.notifies = True
        threading.Thread(target=self._help, name="lent-slot", daemon=True).start()
        self._wake.set()  # the watchdog looks at the socket more often while a slot is lent
        return True

    def reclaim(self, task_id: str) -> bool:
        """The task goes on: one helper ends once its task (if any) is done. Called holding
        `lock`."""
        with self._help_lock:
            if not self._helpers - self._reclaims:
                return False
            self._reclaims += 1
        self._work.set()
        return True

    def _help(self) -> None:
        """A lent slot: run held tasks, oldest first, until asked to end. The lock is taken
        only to pick a task (the socket thread holds it whenever it is not inside a
        function, so a helper never waits for it long: it tries again)."""
        functions, lock, current = self._functions, self.lock, runs_tasks()
        while not self._stopped:
            if not self._held or not lock.acquire(timeout=self.HELD_POLL):
                if self._end_helper():
                    return
                self._work.wait(self.HELD_POLL)
                self._work.clear()
                continue
            try:
                if self._end_helper():
                    return
                held = self._held
                run = held.pop(next(iter(held))) if held else None
                if run is not None:
                    self._helping[run.task_id] = run
                    if run.task_timeout is not None:
                        with self._help_lock:
                            self._help_deadlines.add(run, time.monotonic())
                            self.next_deadline = self._help_deadlines.next_due
                        self._wake.set()  # the watchdog keeps its deadline too
            finally:
                lock.release()
            if run is None:
                continue
            current.run = run
            outcome = (
                runner.run_task(functions, run.function, run.args, run.inputs)
                if run.traceparent is None
                else runner.run_traced(functions, run)
            )
            current.run = None
            with self._help_lock:
                del self._helping[run.task_id]
                if run.task_id in self._overdue:
                    self._overdue.discard(run.task_id)  # answered 124 already
                    continue
            self._helped.append(runner.result_of(run, outcome))
            self._results_ready()

    def _end_helper(self) -> bool:
        """Whether this helper ends now (one was asked to)."""
        with self._help_lock:
            if not self._reclaims:
                return False
            self._reclaims -= 1
            self._helpers -= 1
            return True

    def retract(self, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        held = self._held
        returned = [task_id for task_id in task_ids if held.pop(task_id, None) is not None]
        given = set(returned)
        return returned, [task_id for task_id in task_ids if task_id not in given]

    def cancel(self, task_ids: Sequence[str]) -> CancelledTasks:
        """Drop the held tasks among `task_ids`. The running task, if among them, can be
        stopped only by ending the process (the watchdog calls this, holding the socket,
        while the socket thread is inside its function)."""
        held = self._held
        dropped = [held.pop(task_id) for task_id in dict.fromkeys(task_ids) if task_id in held]
        running = [
            run
            for run in (self._running, *self._helping.values())
            if run is not None and run.task_id in task_ids
        ]
        if not running:
            return CancelledTasks(dropped, [])
        return CancelledTasks(dropped, running, ends_process=True)

    def drop_held(self) -> int:
        count = len(self._held)
        self._held.clear()
        return count

    def started(self) -> list[Run]:
        """The task inside its function (when the watchdog asks) and those helpers run."""
        with self._help_lock:
            helping = list(self._helping.values())
        running = self._running
        return helping if running is None else [running, *helping]

    def held_runs(self) -> list[Run]:
        return list(self._held.values())

    def run_next(self, flush_at: float = math.inf) -> list[bytes]:
        """Run the oldest held task now; its RESULT frames. `flush_at`: when results the
        caller still holds must leave, should this task run long (the watchdog sees to it)."""
        held = self._held
        run = held.pop(next(iter(held)))
        self._flush_at = flush_at
        # Written before the watchdog's alarm is read: see `_next_due`.
        self._started_at = now = time.monotonic()
        poll = self.HELD_POLL if held else self.RUNNING_POLL
        if flush_at < self._wake_at or self._wake_at - now > poll:
            self._wake.set()
        if run.task_timeout is None:
            self._running = run
        else:
            self._deadline = deadline = now + run.task_timeout
            self._running = run  # after its deadline: a timed task is seen with its own
            if deadline < self._wake_at:
                self._wake.set()
        self.lock.release()
        current = self._current
        current.run = run
        try:
            functions = self._functions
            outcome = (
                runner.run_task(functions, run.function, run.args, run.inputs)
                if run.traceparent is None
                else runner.run_traced(functions, run)
            )
        finally:
            current.run = None
            self.lock.acquire()
            self._running = None
        return runner.result_of(run, outcome)

    def take_results(self) -> list[list[bytes]]:
        """The RESULTs of tasks run by helpers; the others are given by `run_next`."""
        helped = self._helped
        taken = []
        while helped:
            taken.append(helped.popleft())
        return taken

    def expire(self, now: float) -> list[Run]:
        """Tasks run by helpers past their task timeout: answered by the caller from now on
        (their results are dropped), which ends the process. The task inside `run_next` is
        the watchdog's affair."""
        with self._help_lock:
            late = self._help_deadlines.expired(now, self._helping)
            self.next_deadline = self._help_deadlines.next_due
            self._overdue.update(run.task_id for run in late)
        return late

    def poke(self) -> None:
        """Let the watchdog act now (a stop was requested). Safe from a signal handler."""
        self._poked = True
        self._wake.set()

    def close(self, wait: float) -> None:
        self._stopped = True
        self._wake.set()
        self._watchdog.join(wait)
        if self.lock.locked():
            self.lock.release()

    def _watch(self) -> None:
        leave_stop_signals_to_main()
        while not self._stopped:
            # Published before the deadline is read: a task that starts meanwhile sees inf
            # and wakes us, so its deadline cannot be missed.
            self._wake_at = math.inf
            self._wake_at = wake_at = min(self._next_due(), self._next_heartbeat())
            woken = self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            # Woken early, it acts only if poked or its time came anyway; else it was woken
            # to move its alarm sooner (a deadline, results to send), and loops to do so.
            if not self._stopped and (not woken or self._poked or time.monotonic() >= wake_at):
                self._poked = False
                self._check()

    def _next_due(self) -> float:
        now = time.monotonic()
        due = self._flush_at
        if self._held or self._helpers:  # a lent slot takes RUNs as they come
            due = min(due, now + self.HELD_POLL)
        elif self._running is not None or now - self._started_at < self.RUNNING_POLL:
            # A task runs, or tasks have been starting: look again soon. (A task starting
            # after `_started_at` was read here sees the alarm published as inf and wakes us.)
            due = min(due, now + self.RUNNING_POLL)
        due = min(due, self.next_deadline)  # a task run by a helper
        deadline = self._deadline
        if deadline > now:
            return min(due, deadline)
        running = self._running  # read after the deadline: see run_next()
        timed = running is not None and running.task_timeout is not None
        return now if timed else due  # passed: act now if it is the running task's

    def _check(self) -> None:
        # Results waiting are sent now, or by the socket thread if it is not inside a
        # function (it sends them before the next task or when none is left): either way
        # this flush time is dealt with, and must not wake the watchdog again.
        self._flush_at = math.inf
        running = self._running
        if running is None or not self.lock.acquire(blocking=False):
            return  # no function running: the socket thread does it all
        try:
            if self._running is not running:
                return  # it finished and another started meanwhile: look again later
            now = time.monotonic()
            if running.task_timeout is not None and now >= self._deadline:
                self._deadline = math.inf  # once, should the callback ever return
                self._on_overdue(running)  # answers 124 and ends the process
            elif self.next_deadline <= now and (late := self.expire(now)):
                self._on_overdue(late[0])  # a task run by a helper: the same
            else:
                self._keep_alive()  # sends the results that wait, among other things
        finally:
            self.lock.release()
