"""The `znode` process: it supervises the node processes that do the work.

Each child is a whole node (its own DEALER connection and registration), run as
`python -m node.cli ... --parent-pid PID`: with `--concurrency 1` the one child registers as
NAME, with N > 1 the children register as NAME.0 .. NAME.N-1. The supervisor forwards
SIGINT/SIGTERM once (children run in their own session so a terminal's Ctrl-C does not reach
them twice), restarts a child that dies, and exits when all children have stopped. Children
die with the supervisor (PR_SET_PDEATHSIG on Linux, and a parent check in their loop).

A child that exits EXIT_RESTART (a task of it passed its task timeout) is restarted at once;
one that keeps crashing soon after starting is restarted ever more slowly. The new child is
told which process it replaces and how that one ended (`--replaces-pid`, `--replaces-reason`),
which its first REGISTER carries so that the broker fails that process's tasks at once. A
child that restarts on purpose hands over the answers the broker may not have stored (on
its report pipe); the next child gets them on its stdin, claims them and sends them.

Starting Python and importing the node takes a few hundred milliseconds of CPU, longer than
a broker's heartbeat expiry on a busy machine. So one spare child stands by (`--standby`:
imported, function sets loaded, not registered) and a restart hands it the dead child's
name, `replaces` and the answers handed over on its stdin: it registers within
milliseconds. With answers to hand over and no spare, a fresh spare gets them at once.

Elastic (`--min N --max M`, a Scaling): the children register as NAME.0, NAME.1, ... and
their number varies between N and M. Each child reports its demand on a pipe of its own
(node/supervision.py); node/scaling.py decides, and the supervisor acts: a child to add
takes the lowest free number and is the spare when there is one; a child to stop gets
SIGTERM, so that it deregisters, finishes what it runs and exits, and is not restarted.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from broker.protocol import Replaces
from node import supervision
from node.config import NodeConfig
from node.scaling import Scaler, ScaleUp, Scaling

log = logging.getLogger(__name__)

RESTART_BACKOFF_MIN = 0.1
RESTART_BACKOFF_MAX = 5.0
YOUNG = 10.0  # seconds: a child dying sooner than this after its start is backed off


@dataclass(frozen=True)
class ChildOptions:
    """What every child is told besides its NodeConfig."""

    log_level: str = "INFO"
    log_file: str | None = None
    log_format: str = "text"
    # The children's environment (None: this process's). znode leaves out the variables
    # of its options: a child gets its options on its command line, where ZTB_MIN would
    # clash with its --concurrency 1.
    environment: dict[str, str] | None = None


@dataclass
class _Child:
    index: int | None  # None: the spare, standing by
    process: subprocess.Popen[bytes]
    started: float
    report_fd: int  # read end of the pipe the child explains its exit on
    demand: supervision.DemandReader | None  # where an elastic child reports its demand


def child_name(config: NodeConfig, index: int, elastic: bool = False) -> str:
    return config.name if config.concurrency == 1 and not elastic else f"{config.name}.{index}"


def _command(
    config: NodeConfig,
    options: ChildOptions,
    report_fd: int,
    demand_fd: int | None,
    name: str | None,
    replaces: Replaces | None,
) -> list[str]:
    argv = [sys.executable, "-m", "node.cli", "--concurrency", "1"]
    for function_set in config.function_sets:
        argv += ["--functions", function_set]
    argv += ["--broker", config.broker_url, "--threads", str(config.threads)]
    argv += ["--prefetch", str(config.prefetch)]
    argv += ["--heartbeat-interval", str(config.heartbeat_interval)]
    argv += ["--log-level", options.log_level, "--log-format", options.log_format]
    if options.log_file:
        argv += ["--log-file", options.log_file]
    if config.curve is not None and config.broker_key is not None:
        argv += ["--curve", config.curve, "--broker-key", config.broker_key]
    argv += ["--parent-pid", str(os.getpid()), "--report-fd", str(report_fd)]
    if demand_fd is not None:
        argv += ["--demand-fd", str(demand_fd)]
    if name is None:
        return [*argv, "--standby"]
    argv += ["--name", name]
    if replaces is not None:
        argv += ["--replaces-pid", str(replaces.pid), "--replaces-reason", replaces.reason]
    return argv


class Supervisor:
    def __init__(
        self, config: NodeConfig, options: ChildOptions, scaling: Scaling | None = None
    ) -> None:
        self._config = config
        self._options = options
        self._scaler = None if scaling is None else Scaler(scaling, config.threads)
        self._children: dict[int, _Child] = {}
        self._retiring: set[int] = set()  # children asked to stop by a scale-down
        self._restart_at: dict[int, float] = {}
        self._replaces: dict[int, Replaces] = {}  # what the next child of an index replaces
        # The answers the last child of an index handed over, for the next one to send.
        self._handover: dict[int, tuple[supervision.Message, ...]] = {}
        self._backoff: dict[int, float] = {}  # next restart delay of a child that dies young
        self._standby: _Child | None = None
        self._standby_at = math.inf  # when to start a spare, if there is none
        self._stops = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def run(self) -> int:
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
        old = {sig: signal.signal(sig, _note) for sig in handled}
        try:
            # The spare first: ready no later than the children, for a crash right away.
            self._standby = self._start(None, None)
            self._standby_at = math.inf
            scaling = None if self._scaler is None else self._scaler.scaling
            count = self._config.concurrency if scaling is None else scaling.minimum
            for index in range(count):
                self._spawn(index, self._start(self._name(index), None))
            names = ", ".join(self._name(i) for i in range(count))
            if scaling is None:
                log.info("supervising node processes %s", names)
            else:
                log.info(
                    "supervising node processes %s, scaling between %d and %d processes "
                    "(idle ones stop after %g s)",
                    names,
                    scaling.minimum,
                    scaling.maximum,
                    scaling.scale_down_after,
                )
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for child in [*self._children.values(), *filter(None, [self._standby])]:
                _discard(child)

    def _name(self, index: int) -> str:
        return child_name(self._config, index, elastic=self._scaler is not None)

    def _spawn(self, index: int, child: _Child) -> None:
        child.index, child.started = index, time.monotonic()
        self._children[index] = child
        if self._scaler is not None:
            self._scaler.started(index, child.started)

    def _restart(self, index: int) -> None:
        work = supervision.Assignment(
            self._name(index), self._replaces.pop(index, None), self._handover.pop(index, ())
        )
        child = self._activate_standby(work)
        if child is None and work.answers:  # answers to hand over travel on a spare's stdin
            child = self._assign(self._start(None, None), work)
        self._spawn(index, child or self._start(work.name, work.replaces))

    def _start(self, name: str | None, replaces: Replaces | None) -> _Child:
        """A new child process named `name`, or a spare if `name` is None."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        demand_r, demand_w = os.pipe() if self._scaler is not None else (None, None)
        passed = (write_fd,) if demand_w is None else (write_fd, demand_w)
        command = _command(self._config, self._options, write_fd, demand_w, name, replaces)
        stdin = subprocess.DEVNULL if name else subprocess.PIPE
        try:
            process = subprocess.Popen(
                command,
                start_new_session=True,
                stdin=stdin,
                pass_fds=passed,
                env=self._options.environment,
            )
        except BaseException:
            for fd in (read_fd, demand_r):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in passed:  # the child has its copies; EOF comes when it exits
                os.close(fd)
        demand = None if demand_r is None else supervision.DemandReader(demand_r)
        return _Child(None, process, time.monotonic(), read_fd, demand)

    def _activate_standby(self, work: supervision.Assignment) -> _Child | None:
        """The spare, put to `work`; None if there is no live spare."""
        standby, self._standby = self._standby, None
        self._standby_at = min(self._standby_at, time.monotonic())  # another one, now
        if standby is None:
            return None
        return self._assign(standby, work)

    @staticmethod
    def _assign(spare: _Child, work: supervision.Assignment) -> _Child | None:
        """`spare`, told its work (on its stdin, closed after); None if it died."""
        stdin = spare.process.stdin
        assert stdin is not None
        try:
            stdin.write(supervision.encode_assignment(work))
            stdin.close()
        except OSError:  # it died: it is of no use
            _discard(spare)
            return None
        return spare

    def _loop(self) -> int:
        exit_code = 0
        while self._children or self._standby is not None or (self._restart_at and not self._stops):
            pipes = self._demand_pipes()
            ready = select.select([self._wake_r.fileno(), *pipes], [], [], self._wait_time())[0]
            self._read_demand([pipes[fd] for fd in ready if fd in pipes])
            for signum in self._drain_wakeups():
                if signum in (signal.SIGINT, signal.SIGTERM):
                    self._on_stop()
            exit_code = max(exit_code, self._reap())
            self._restart_due()
            self._scale()
        return 130 if self._stops > 1 else exit_code

    def _wait_time(self) -> float:
        now = time.monotonic()
        due = [*self._restart_at.values(), 1.0 + now]
        if self._standby is None and not self._stops:
            due.append(self._standby_at)
        if self._scaler is not None and not self._stops:
            due.append(self._scaler.next_deadline(now))
        return max(0.0, min(due) - now)

    def _drain_wakeups(self) -> bytes:
        try:
            return self._wake_r.recv(256)
        except BlockingIOError:
            return b""

    def _on_stop(self) -> None:
        self._stops += 1
        self._restart_at.clear()
        if self._standby is not None:
            self._standby.process.terminate()  # not serving: nothing to finish
        signum = signal.SIGTERM if self._stops == 1 else signal.SIGINT
        for index, child in self._children.items():
            if signum == signal.SIGTERM and index in self._retiring:
                continue  # stopping already: a second signal would cut its tasks short
            # A child's second signal makes it exit at once, as a second Ctrl-C should.
            for _ in range(self._stops if signum == signal.SIGINT else 1):
                child.process.send_signal(signum)

    def _reap_standby(self) -> None:
        standby = self._standby
        code = None if standby is None else standby.process.poll()
        if standby is None or code is None:
            return
        self._standby = None
        if standby.process.stdin is not None:
            standby.process.stdin.close()
        reported = supervision.read_report(standby.report_fd)
        if not self._stops:
            reason = supervision.describe_exit(code, reported.reason)
            log.warning("the spare node process %s; starting another later", reason)
            self._standby_at = time.monotonic() + RESTART_BACKOFF_MAX

    def _reap(self) -> int:
        self._reap_standby()
        worst = 0
        for index, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[index]
            report = supervision.read_report(child.report_fd)
            reported = report.reason
            if child.demand is not None:
                child.demand.close()
            if index in self._retiring:
                self._retired(index, child, code, reported)
            elif self._stops:
                # A restart it was about to ask for no longer matters: the node is stopping.
                worst = max(worst, code if code > 0 and code != supervision.EXIT_RESTART else 0)
            elif supervision.is_setup_error(code, reported):
                name = self._name(index)
                log.error("node process %s cannot start (see above); stopping", name)
                self._on_stop()
                worst = supervision.SETUP_ERROR
            else:
                self._schedule_restart(index, child, code, reported)
                if report.answers:
                    self._handover[index] = report.answers
        return worst

    def _schedule_restart(self, index: int, child: _Child, code: int, reported: str) -> None:
        reason = supervision.describe_exit(code, reported)
        age = time.monotonic() - child.started
        delay, backoff = restart_delay(code, age, self._backoff.pop(index, None))
        if backoff is not None:
            self._backoff[index] = backoff
        log.warning(
            "node process %s (pid %d) %s; restarting it in %.1f s",
            self._name(index),
            child.process.pid,
            reason,
            delay,
        )
        self._replaces[index] = Replaces(child.process.pid, reason)
        self._restart_at[index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        if self._stops:
            return
        now = time.monotonic()
        for index, when in list(self._restart_at.items()):
            if when <= now:
                del self._restart_at[index]
                self._restart(index)
        if self._standby is None and now >= self._standby_at:
            self._standby = self._start(None, None)
            self._standby_at = math.inf

    # ------------------------------------------------------------------ elastic

    def _demand_pipes(self) -> dict[int, int]:
        """The demand pipes to watch (those of the children serving), to their children."""
        return {
            child.demand.fd: index
            for index, child in self._children.items()
            if child.demand is not None and not child.demand.ended and index not in self._retiring
        }

    def _read_demand(self, indices: list[int]) -> None:
        """Hand the scaler what these children reported."""
        now = time.monotonic()
        for index in indices:
            reader = self._children[index].demand
            demand = None if reader is None else reader.read()
            if demand is not None and self._scaler is not None:
                self._scaler.reported(index, demand, now)

    def _scale(self) -> None:
        """Carry out what the scaler decides now (nothing while stopping)."""
        if self._scaler is None or self._stops:
            return
        functions = ", ".join(self._config.function_sets)
        for decision in self._scaler.decide(time.monotonic()):
            if isinstance(decision, ScaleUp):
                index = self._free_index()
                waiting = []
                if decision.backlog:
                    waiting.append(f"broker backlog {decision.backlog} for {functions}")
                if decision.held:
                    waiting.append(f"{decision.held} task(s) held by busy processes")
                why = " and ".join(waiting)
                log.info(
                    "scaling up to %d processes: %s; starting %s",
                    decision.processes,
                    why,
                    self._name(index),
                )
                child = self._activate_standby(supervision.Assignment(self._name(index)))
                self._spawn(index, child or self._start(self._name(index), None))
            else:
                index = decision.index
                log.info(
                    "scaling down to %d: process %s idle %.0f s",
                    decision.processes,
                    self._name(index),
                    decision.idle,
                )
                self._retire(index)

    def _free_index(self) -> int:
        """The lowest process number not in use (numbers freed by a scale-down come back)."""
        taken = {*self._children, *self._restart_at, *self._retiring}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def _retire(self, index: int) -> None:
        """Stop child `index` for good: SIGTERM, so that it deregisters, finishes and exits."""
        child = self._children.get(index)
        if child is None:  # waiting to be restarted: it need not be
            self._restart_at.pop(index, None)
            self._replaces.pop(index, None)
            self._handover.pop(index, None)  # (the broker fails those attempts as crashed)
            self._backoff.pop(index, None)
            return
        self._retiring.add(index)
        child.process.terminate()

    def _retired(self, index: int, child: _Child, code: int, reported: str) -> None:
        self._retiring.discard(index)
        self._backoff.pop(index, None)
        if code == 0:
            log.info("node process %s stopped", self._name(index))
        else:
            reason = supervision.describe_exit(code, reported)
            log.warning("node process %s, being stopped, %s", self._name(index), reason)


def restart_delay(code: int, age: float, backoff: float | None) -> tuple[float, float | None]:
    """How long to wait before restarting a child that exited with `code` `age` seconds after
    it started, and the delay to keep for its successor's next crash (None: none)."""
    if code == supervision.EXIT_RESTART:
        return 0.0, backoff  # it asked for it: nothing is wrong with starting again
    if age >= YOUNG:
        return 0.0, None
    # A child that keeps crashing right after starting is restarted ever more slowly; the
    # first time at once, as the tasks sent to it wait for the new one to register.
    delay = backoff or 0.0
    return delay, min(max(delay * 2, RESTART_BACKOFF_MIN), RESTART_BACKOFF_MAX)


def _discard(child: _Child) -> None:
    child.process.kill()
    child.process.wait()
    if child.process.stdin is not None:
        child.process.stdin.close()
    os.close(child.report_fd)
    if child.demand is not None:
        child.demand.close()


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
