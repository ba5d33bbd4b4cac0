"""A long run of mixed load against a real broker and nodes, with kills: nothing may be lost,
answered wrong or run more often than its answer says, and the processes should not grow.

    .venv/bin/python tools/soak.py [--duration 3600] [--node-kill-interval 300] [--json]

Starts `zbroker start` (a store in the run's directory) and --nodes `znode --functions soak`
through client.cluster.LocalCluster, as a user would; the nodes load this very file as their
function set (tools/ on their PYTHONPATH): `soak_ok` returns a value the client checks,
`soak_raise` raises SoakError, `soak_sleep` outlives its task timeout. Each execution first
appends a line to a file of its own process (one O_APPEND write, so even an execution
SIGKILLed a moment later is counted), in the directory named by ZTB_SOAK_DIR.

The load, about --rate tasks/s in all, for --duration seconds, each stream a thread with its
own Client (or processes of its own):
  map       70 %: Client.imap(answers=True) of 50 to 400 soak_ok tasks, --window in flight
  future    20 %: Client.submit futures, priorities 0..9, 15 % of them soak_raise
  execute   10 %: Client.execute_raw one at a time, priorities 0..9, 10 % soak_raise; their
            round trips are the latency figures
  timeout   --timeouts-per-minute futures of soak_sleep, which must end exit 124 (Timeout)
  zsubmit   every --zsubmit-interval s a `zsubmit --json` process, or `zsubmit map --json`
            of 20 lines, in turn
Every --purge-interval s the dead letters of tasks already answered are purged, as an
operator would, so that the broker's memory shows leaks, not a queue it was asked to keep.

Kills: a node process (picked among those registered) is SIGKILLed at 0.5, 1.5, 2.5, ...
times --node-kill-interval (its supervisor starts another; the broker retries its tasks). At
--broker-kill-at of the run, once half the slots are busy (waiting up to 15 s for it), the
broker is SIGKILLed and restarted on the same store and address; a node kill due within 5 s
of it waits until 5 s after.

Measured, not guessed:
  lost        tasks never answered (a client heard nothing for --timeout s)
  wrong       answered, but not as the function must: soak_ok not exit 0 with its value,
              soak_raise not exit 1 SoakError with its message, soak_sleep not exit 124
              Timeout (a refusal is wrong too)
  duplicated  tasks executed (the record files) more often than the `attempts` of their
              answer (TASK_COMPLETED; a future's success is FETCHed again for its attempts),
              each with what came between its executions: the broker kill, a kill of the
              node process that ran it, that process's end, or nothing ("unexplained")
  retried unasked  a soak_raise started again after it raised, or a soak_sleep after it
              ran its whole timeout, with no kill between: no task asks for those retries
              (protocol.md 5.1); the goal is 0
  broker-kill reruns  tasks started before the broker kill and again after it while the
              process that ran the first was not killed by the run (one that ended on
              purpose, for a timeout, hands its answer on): the goal is 0 (protocol.md 7.3)
  RSS and fds of the broker, the znode supervisors and the registered node processes, from
  /proc every --sample-interval s; the slope per hour by least squares over each process's
  samples after its warm-up (--warm-up, default the longer of 20 % of the run and 60 s,
  counted from the process's first sample: a restarted broker is a series of its own); a
  slope needs 5 samples over 60 s. The broker keeps answers 300 s by default (--keep-results,
  at most 64 MiB of them): a shorter warm-up leaves their filling in its slope. Each
  soak_sleep ends its node process (protocol.md 5.3), so with timeouts few node processes
  live long: --timeouts-per-minute 0 to watch them.
  latency     p50 and p99 of execute round trips (and of future ones) in the first and the
              last quarter of the run
  store       the store file and its -wal: at the start, at the end, the largest seen, and
              their growth per hour after the warm-up
  counters    the broker's STATUS counters just before its kill and at the end (the
              restarted broker's, from 0): adopted, restored_unclaimed, claims_refused, ...

Promises, exit status 1 if one is broken: 0 lost, 0 wrong, 0 duplicated; with
--max-rss-slope MB_PER_H or --max-fd-slope FDS_PER_H, no process's slope above it. Exit
status 2 if the run could not be carried out, 130 after Ctrl-C or SIGTERM; every process
started is stopped and reaped in any case. Logs, store and record files are kept with
--keep-dir or when a promise is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import queue
import random
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from broker.protocol import TaskCompleted, loads_payload
from chaos import SetupFailed, children_of, execution_log, serve_run
from client import (
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    Client,
    ClientError,
    ControlClient,
    NotFound,
    ReqLink,
    TaskFailed,
)
from client.cluster import LocalCluster, Process, command
from node.context import current_run

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["soak_ok", "soak_raise", "soak_sleep"]  # what nodes offer; the rest is the tool

TOOLS = Path(__file__).resolve().parent
DIR_VARIABLE = "ZTB_SOAK_DIR"
SUFFIX = ".executions"

# =============================================================================== the workload
#
# Each function first appends "start KEY TIME PID ATTEMPT TASK_ID" to a file of its own
# process: one os.write on an O_APPEND descriptor, which no other writer splits and a kill
# cannot undo once it returned. soak_raise adds a "raised" line just before it raises.


class SoakError(Exception):
    """What soak_raise raises: its answer must be exit 1 with this type and message."""


def expected(key: int, size: int) -> str:
    """What soak_ok(key, delay, size) returns: checkable, and `size` bytes long or more."""
    return f"{key}:" + "x" * size


def raise_message(key: int) -> str:
    return f"planned failure of task {key}"


def _note(event: str, key: int) -> None:
    run = current_run()
    attempt, task_id = (run.attempt, run.task_id) if run is not None else (0, "-")
    line = f"{event} {key} {time.time():.6f} {os.getpid()} {attempt} {task_id}\n"
    os.write(execution_log(DIR_VARIABLE), line.encode())


def soak_ok(key: int, delay: float, size: int) -> str:
    """Hold a slot for `delay` seconds, return expected(key, size)."""
    _note("start", key)
    time.sleep(delay)
    return expected(key, size)


def soak_raise(key: int, delay: float) -> NoReturn:
    """Hold a slot for `delay` seconds, then raise SoakError."""
    _note("start", key)
    time.sleep(delay)
    _note("raised", key)
    raise SoakError(raise_message(key))


def soak_sleep(key: int, seconds: float) -> int:
    """Sleep past the task's timeout: the node must stop it (exit 124)."""
    _note("start", key)
    time.sleep(seconds)
    return key


@dataclass(frozen=True, slots=True)
class Execution:
    event: str  # "start" or "raised"
    key: int
    at: float  # time.time() in the function
    pid: int
    attempt: int
    task_id: str


def read_executions(directory: Path) -> list[Execution]:
    """Every line recorded in `directory`, oldest first."""
    lines = []
    for path in directory.glob(f"*{SUFFIX}"):
        for line in path.read_text().splitlines():
            event, key, at, pid, attempt, task_id = line.split(" ", 5)
            lines.append(Execution(event, int(key), float(at), int(pid), int(attempt), task_id))
    return sorted(lines, key=lambda e: e.at)


# ================================================================================ the ledger

OK, RAISE, SLEEP = "soak_ok", "soak_raise", "soak_sleep"


@dataclass(slots=True)
class Task:
    """One task the load sent, and what its answer was (None until it came). The result
    itself is checked when it comes and not kept: an hour of tasks is half a million."""

    key: int
    stream: str
    function: str
    priority: int
    size: int = 0
    submitted: float = 0.0  # time.time()
    answered: float | None = None
    round_trip: float | None = None  # seconds, for the latency figures
    task_id: str | None = None
    exit_code: int | None = None
    attempts: int | None = None
    wrong: str | None = None  # why the answer is not what the function must give
    problem: str = ""  # no answer (lost): what the client said


class Ledger:
    """Every task of the run, by key; the streams' threads add and settle them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[int, Task] = {}
        self._keys = itertools.count()
        self.answered = 0
        self.answered_ids: set[str] = set()

    def new(self, stream: str, function: str, priority: int, size: int = 0) -> Task:
        task = Task(next(self._keys), stream, function, priority, size, time.time())
        with self.lock:
            self.tasks[task.key] = task
        return task

    def settle(self, task: Task, answer: TaskCompleted | ClientError, now: float = 0.0) -> None:
        """The task's answer as the broker gave it, or the client's error instead: a
        refusal is an answer, and a wrong one; other errors leave the task unanswered."""
        if isinstance(answer, TaskCompleted):
            error = answer.error
            kind, message = (error.type, error.message) if error else (None, "")
            result = loads_payload(answer.result)
            self._answer(task, answer.task_id, answer.exit_code, answer.attempts, now)
            task.wrong = wrong_answer(task, result, kind, message)
        elif isinstance(answer, TaskFailed):
            self._answer(task, answer.task_id, answer.exit_code, answer.attempts, now)
            task.wrong = wrong_answer(task, None, answer.error_type, answer.message)
        elif isinstance(answer, BrokerError):
            self._answer(task, task.task_id, None, None, now)
            task.wrong = f"refused: {answer}"
        else:
            task.problem = f"unanswered: {answer}"

    def succeed(self, task: Task, value: Any, attempts: int | None, now: float) -> None:
        self._answer(task, task.task_id, 0, attempts, now)
        task.wrong = wrong_answer(task, value, None, "")

    def settle_json(self, task: Task, answer: dict[str, Any]) -> None:
        """An answer as `zsubmit --json` prints it."""
        self._answer(task, answer["task_id"], answer["exit_code"], answer["attempts"], 0.0)
        error = answer.get("error") or {}
        task.wrong = wrong_answer(
            task, answer["result"], error.get("type"), error.get("message", "")
        )

    def give_up(self, tasks: list[Task], problem: str) -> None:
        for task in tasks:
            task.problem = f"unanswered: {problem}"

    def _answer(
        self, task: Task, task_id: str | None, code: int | None, attempts: int | None, now: float
    ) -> None:
        task.answered = now or time.time()
        task.round_trip = task.answered - task.submitted
        task.task_id, task.exit_code, task.attempts = task_id, code, attempts
        with self.lock:
            self.answered += 1
            if task_id is not None:
                self.answered_ids.add(task_id)


def wrong_answer(task: Task, result: Any, kind: str | None, message: str) -> str | None:
    """Why this answer is not what the task's function must give, or None if it is."""
    got = f"exit {task.exit_code} {kind or ''}".rstrip()
    if task.function == OK:
        want = expected(task.key, task.size)
        if task.exit_code == 0 and result == want:
            return None
        return f"{got}, result {str(result)[:40]!r}, not exit 0 {want[:40]!r} ({message[:80]})"
    if task.function == RAISE:
        if (task.exit_code, kind, message) == (1, "SoakError", raise_message(task.key)):
            return None
        return f"{got} {message[:80]!r}, not exit 1 SoakError {raise_message(task.key)!r}"
    if (task.exit_code, kind) == (124, "Timeout"):
        return None
    return f"{got}, not exit 124 Timeout ({message[:80]})"


# ================================================================================ the streams

SHARES = {"map": 0.70, "future": 0.20, "execute": 0.10}  # of --rate
RAISE_SHARE = {"future": 0.15, "execute": 0.10, "zsubmit": 0.30}
SIZES = (0, 16, 256, 4096)  # bytes of soak_ok's result, picked at random
MAP_SIZES = (50, 400)
ZSUBMIT_MAP_LINES = 20


class Pacer:
    """Spreads a stream's tasks at `rate` per second: `wait` until the next is due."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.due = time.monotonic()

    def wait(self, stop: threading.Event, count: int = 1) -> bool:
        """Wait for `count` tasks' turn; False once `stop` is set. A stream more than a
        second behind starts afresh rather than sending a burst to catch up."""
        now = time.monotonic()
        self.due = max(self.due, now - 1.0)
        if stop.wait(max(0.0, self.due - now)):
            return False
        self.due += count / self.rate
        return True


class Children:
    """The zsubmit processes under way: each is reaped by its stream, and any left are
    killed and reaped by `close`, after which none may start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen[bytes]] = set()
        self.closed = False

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.lock:
            if self.closed:
                raise SetupFailed("the run is ending: no zsubmit may start")
            popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
            self.live.add(popen)
        return popen

    def finish(self, popen: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str]:
        """Its exit status and output; killed after `timeout` s."""
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
        finally:
            with self.lock:
                self.live.discard(popen)
        return popen.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def close(self) -> None:
        with self.lock:
            self.closed = True
            live = list(self.live)
        for popen in live:
            popen.kill()
            popen.wait()


@dataclass
class Load:
    """What the streams share: the options, the ledger, the broker's address (the same
    across its restart) and when to stop."""

    args: argparse.Namespace
    ledger: Ledger
    url: str
    children: Children
    stopping: threading.Event = field(default_factory=threading.Event)  # send no more


class Stream(threading.Thread):
    """One kind of load in a thread of its own; an unexpected error ends the run (exit 2)."""

    def __init__(self, name: str, load: Load, seed: int) -> None:
        super().__init__(daemon=True, name=name)
        self.load, self.args, self.ledger = load, load.args, load.ledger
        self.rng = random.Random(seed)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:
            self.error = exc

    def loop(self) -> None:
        raise NotImplementedError

    def client(self) -> Client:
        return Client(self.load.url, timeout=self.args.timeout)

    def pick(self, stream: str) -> tuple[str, int]:
        """A function (soak_raise with the stream's share) and a priority 0..9."""
        raises = self.rng.random() < RAISE_SHARE.get(stream, 0.0)
        return (RAISE if raises else OK), self.rng.randrange(10)

    def arguments(self, task: Task) -> tuple[Any, ...]:
        delay = self.args.delay
        if task.function == OK:
            return (task.key, delay, task.size)
        if task.function == RAISE:
            return (task.key, delay)
        return (task.key, self.args.task_timeout * 4)


class MapStream(Stream):
    """Pipelined maps of soak_ok, one after another at the stream's rate."""

    def loop(self) -> None:
        pacer = Pacer(self.args.rate * SHARES["map"] / self.args.map_clients)
        with self.client() as client:
            size = self.rng.randint(*MAP_SIZES)
            while pacer.wait(self.load.stopping, size):
                self.one_map(client, size)
                size = self.rng.randint(*MAP_SIZES)

    def one_map(self, client: Client, size: int) -> None:
        priority = self.rng.randrange(10)
        tasks = [self.ledger.new("map", OK, priority, self.rng.choice(SIZES)) for _ in range(size)]
        calls = [self.arguments(task) for task in tasks]
        answers = client.imap(
            OK,
            calls,
            window=self.args.window,
            priority=priority,
            answers=True,
            return_exceptions=True,
        )
        done = 0
        try:
            for task, answer in zip(tasks, answers, strict=False):
                self.ledger.settle(task, answer)
                done += 1
        except ClientError as exc:  # nothing heard for --timeout s: the rest are lost
            self.ledger.give_up(tasks[done:], str(exc))


class ExecuteStream(Stream):
    """One blocking call at a time (execute_raw: the answer with its attempts)."""

    def loop(self) -> None:
        pacer = Pacer(self.args.rate * SHARES["execute"])
        with self.client() as client:
            while pacer.wait(self.load.stopping):
                function, priority = self.pick("execute")
                task = self.ledger.new("execute", function, priority, self.rng.choice(SIZES))
                started = time.perf_counter()
                try:
                    completed = client.execute_raw(
                        function, self.arguments(task), priority=priority
                    )
                except (BrokerTimeout, BrokerUnreachable) as exc:
                    self.ledger.give_up([task], str(exc))
                    continue
                except BrokerError as exc:
                    self.ledger.settle(task, exc)
                    continue
                self.ledger.settle(task, completed)
                task.round_trip = time.perf_counter() - started


class FutureStream(Stream):
    """Futures at the stream's rate; each answer is taken in this thread as it comes (its
    done-callback only queues it). A success carries no attempts, so they are FETCHed: the
    broker keeps answers for minutes (--keep-results), and a FETCH never runs a task."""

    def __init__(self, name: str, load: Load, seed: int, rate: float) -> None:
        super().__init__(name, load, seed)
        self.rate = rate
        self.done: queue.SimpleQueue[tuple[Task, Future[Any], float]] = queue.SimpleQueue()
        self.outstanding = 0

    def loop(self) -> None:
        pacer = Pacer(self.rate)
        with self.client() as client, ReqLink(self.load.url) as link:
            control = ControlClient(link)
            while pacer.wait(self.load.stopping):
                self.submit(client)
                self.take_answers(control, wait=0.0)
            self.take_answers(control, wait=self.args.timeout)  # the rest, or they are lost

    def submit(self, client: Client) -> None:
        if self.name == "timeout":
            function, priority = SLEEP, self.rng.randrange(10)
        else:
            function, priority = self.pick("future")
        task = self.ledger.new(self.name, function, priority, self.rng.choice(SIZES))
        timeout = self.args.task_timeout if function == SLEEP else None
        future = client.submit(
            function, *self.arguments(task), priority=priority, task_timeout=timeout
        )
        task.task_id = future.task_id
        self.outstanding += 1
        future.add_done_callback(lambda f: self.done.put((task, f, time.time())))

    def take_answers(self, control: ControlClient, wait: float) -> None:
        """Settle the answers that came; with `wait`, until none is outstanding or none
        came for `wait` seconds (those left are lost)."""
        while self.outstanding:
            try:
                task, future, at = self.done.get(timeout=wait) if wait else self.done.get_nowait()
            except queue.Empty:
                break
            self.outstanding -= 1
            self.settle(control, task, future, at)
        if wait and self.outstanding:
            unanswered = [t for t in self.ledger_tasks() if t.answered is None and not t.problem]
            self.ledger.give_up(unanswered, f"no answer for {wait:g} s")

    def settle(self, control: ControlClient, task: Task, future: Future[Any], at: float) -> None:
        error = future.exception()
        if isinstance(error, ClientError):
            self.ledger.settle(task, error, at)
            return
        if error is not None:
            raise error
        attempts = None
        with contextlib.suppress(NotFound):
            attempts = control.fetch(str(task.task_id), timeout=self.args.timeout).attempts
        self.ledger.succeed(task, future.result(), attempts, at)

    def ledger_tasks(self) -> list[Task]:
        with self.ledger.lock:
            return [t for t in self.ledger.tasks.values() if t.stream == self.name]


class ZsubmitStream(Stream):
    """Every --zsubmit-interval s a zsubmit process, one task or a map in turn."""

    def loop(self) -> None:
        pacer = Pacer(1 / self.args.zsubmit_interval)
        for turn in itertools.count():
            if not pacer.wait(self.load.stopping):
                return
            if turn % 2 == 0:
                self.run_one()
            else:
                self.run_map()

    def base(self, subcommand: str, priority: int) -> list[str]:
        """zsubmit SUBCOMMAND and its options; the function and its arguments go after."""
        options = ["--broker", self.load.url, "--json", "--timeout", str(self.args.timeout)]
        return [*command("zsubmit"), subcommand, *options, "--priority", str(priority)]

    def run_one(self) -> None:
        function, priority = self.pick("zsubmit")
        task = self.ledger.new("zsubmit", function, priority, self.rng.choice(SIZES))
        task_args = [orjson.dumps(a).decode() for a in self.arguments(task)]
        argv = [*self.base("run", priority), function, *task_args]
        code, out, err = self.load.children.finish(self.load.children.start(argv), self.deadline)
        lines = out.strip().splitlines()
        if code in (0, 1) and lines:
            self.ledger.settle_json(task, orjson.loads(lines[-1]))
        else:
            self.check_code(code, err)
            self.ledger.give_up([task], f"zsubmit exit {code}: {err.strip()[-200:]}")

    def run_map(self) -> None:
        priority = self.rng.randrange(10)
        tasks = [
            self.ledger.new("zsubmit map", OK, priority, self.rng.choice(SIZES))
            for _ in range(ZSUBMIT_MAP_LINES)
        ]
        path = Path(self.args.workdir) / f"zsubmit-{tasks[0].key}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(self.arguments(t)) + b"\n" for t in tasks))
        argv = [*self.base("map", priority), "--window", "8", OK, str(path)]
        code, out, err = self.load.children.finish(self.load.children.start(argv), self.deadline)
        path.unlink()
        self.check_code(code, err)
        for line in out.splitlines():
            answer = orjson.loads(line)
            self.ledger.settle_json(tasks[answer["line"] - 1], answer)
        unanswered = [t for t in tasks if t.answered is None]
        self.ledger.give_up(unanswered, f"zsubmit map exit {code}: {err.strip()[-200:]}")

    @property
    def deadline(self) -> float:
        return float(self.args.timeout) + 30

    @staticmethod
    def check_code(code: int, err: str) -> None:
        if code not in (0, 1, 3):  # 2: the tool's command line is wrong; others: a crash
            raise SetupFailed(f"zsubmit exited with {code}: {err.strip()[-500:]}")


class Purger(Stream):
    """Purges the dead letters of tasks already answered, as an operator would; those of
    tasks the load still waits for are left alone."""

    purged = 0

    def loop(self) -> None:
        interval = self.args.purge_interval
        with ReqLink(self.load.url) as link:
            control = ControlClient(link)
            while not self.load.stopping.wait(interval):
                with contextlib.suppress(BrokerTimeout):  # a broker restart under way
                    for entry in control.dead_letters(timeout=10).entries:
                        if entry["task_id"] in self.ledger.answered_ids:
                            self.purged += control.purge(entry["task_id"], timeout=10)


def make_streams(load: Load, seed: int) -> list[Stream]:
    args = load.args
    streams: list[Stream] = [MapStream(f"map{i}", load, seed + i) for i in range(args.map_clients)]
    streams.append(FutureStream("future", load, seed + 100, args.rate * SHARES["future"]))
    streams.append(ExecuteStream("execute", load, seed + 101))
    if args.timeouts_per_minute > 0:
        streams.append(FutureStream("timeout", load, seed + 102, args.timeouts_per_minute / 60))
    if args.zsubmit_interval > 0:
        streams.append(ZsubmitStream("zsubmit", load, seed + 103))
    if args.purge_interval > 0:
        streams.append(Purger("purge", load, seed + 104))
    return streams


# ================================================================================= the kills


@dataclass
class Kill:
    kind: str  # "node" (one node process) or "broker"
    target: str
    pid: int
    at: float  # time.time() just after the signal
    running: int = 0  # STATUS just before: tasks active on it (the broker: running in all)
    listening: float | None = None  # the broker: when its successor listened
    nodes_back: float | None = None  # the broker: seconds until every node registered again
    counters: dict[str, int] | None = None  # the broker: its STATUS counters just before
    note: str = ""


class SoakCluster(LocalCluster):
    """The run's broker and znodes, with the run's settings. The broker started again after
    its kill listens on the same address and opens the same store (LocalCluster keeps both);
    `broker_pids` lists every broker started, in order."""

    def __init__(self, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(workdir, log_level="INFO", env=env)
        self.args = args
        self.znodes: dict[str, Process] = {}
        self.broker_pids: list[int] = []

    def start_broker(
        self, *args: str, bind: str = "tcp://127.0.0.1:0", store: str | Path | None = None
    ) -> Process:
        a = self.args
        run = ["--heartbeat-interval", str(a.heartbeat_interval), "--liveness", str(a.liveness)]
        run += ["--retries", str(a.retries), "--drain-timeout", "2", *a.broker_arg]
        broker = super().start_broker(*run, *args, bind=bind, store=store)
        self.broker_pids.append(broker.pid)
        return broker

    def start_znode(self) -> None:
        name = f"soak{len(self.znodes) + 1}"
        concurrency = self.args.concurrency
        self.znodes[name] = self.start_node(functions=["soak"], concurrency=concurrency, name=name)

    @property
    def slots(self) -> int:
        return int(self.args.nodes * self.args.concurrency)


def plan(duration: float, interval: float, broker_at: float) -> list[tuple[float, str]]:
    """(seconds into the run, "node" or "broker"): node kills at 0.5, 1.5, ... intervals, the
    broker's at `broker_at` of the run; a node kill within GUARD s of it moves after it."""
    broker = duration * broker_at if broker_at > 0 else None
    kills = [(broker, "broker")] if broker is not None else []
    at = interval / 2
    while interval > 0 and at < duration:
        moved = at if broker is None or abs(at - broker) >= GUARD else broker + GUARD
        kills.append((moved, "node"))
        at += interval
    return sorted(k for k in kills if k[0] < duration)


GUARD = 5.0
BUSY_WAIT = 15.0  # seconds the broker kill waits for half the slots to be busy


class Killer(threading.Thread):
    """Carries out the plan of kills until `done` is set."""

    def __init__(
        self, cluster: SoakCluster, args: argparse.Namespace, say: Callable[[str], None]
    ) -> None:
        super().__init__(daemon=True, name="killer")
        self.cluster, self.args, self.say = cluster, args, say
        self.rng = random.Random(args.seed)
        self.kills: list[Kill] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.skipped = 0

    def run(self) -> None:
        a = self.args
        try:
            after_broker = 0.0  # a node kill waits GUARD s after the broker's restart
            for at, kind in plan(a.duration, a.node_kill_interval, a.broker_kill_at):
                due = max(self.started + at, after_broker)
                if self.done.wait(max(0.0, due - time.monotonic())):
                    return
                if kind == "broker":
                    self.kill_broker()
                    after_broker = time.monotonic() + GUARD
                else:
                    self.kill_node()
        except BaseException as exc:  # the main thread reports it and ends the run
            self.error = exc

    def kill_node(self) -> None:
        try:
            nodes = self.cluster.status()["nodes"]
        except (BrokerTimeout, BrokerUnreachable):
            self.skipped += 1
            self.say("no STATUS from the broker: this node kill is skipped")
            return
        ours = set(children_of({p.pid for p in self.cluster.znodes.values()}))
        candidates = [n for n in nodes if n["pid"] in ours]
        if not candidates:
            self.skipped += 1
            self.say("no node process registered: this node kill is skipped")
            return
        node = self.rng.choice(candidates)
        os.kill(node["pid"], signal.SIGKILL)
        self.kills.append(Kill("node", node["name"], node["pid"], time.time(), node["active"]))
        self.say(
            f"SIGKILL node process {node['name']} (pid {node['pid']}), {node['active']} active"
        )

    def kill_broker(self) -> None:
        cluster = self.cluster
        before, waited = self.busy()
        broker = cluster.broker
        assert broker is not None
        broker.signal(signal.SIGKILL)
        kill = Kill("broker", "zbroker", broker.pid, time.time(), before["running"])
        kill.counters = before["counters"]
        broker.wait(timeout=10)  # its lock on the store goes with it
        self.kills.append(kill)
        cluster.start_broker(bind=cluster.url)  # the same address; the store is kept
        kill.listening = cluster.listening_since
        kill.nodes_back = self.nodes_back(kill.at)
        kill.note = f"{before['queued']} queued, {before['held']} held; waited {waited:.1f} s"
        self.say(
            f"SIGKILL broker (pid {kill.pid}): {kill.running} running, {kill.note}; listening "
            f"again after {kill.listening - kill.at:.2f} s, nodes back after {kill.nodes_back} s"
        )

    def busy(self) -> tuple[dict[str, Any], float]:
        """STATUS once half the slots run tasks (or after BUSY_WAIT s), and the wait."""
        start = time.monotonic()
        while True:
            status = self.cluster.status()
            waited = time.monotonic() - start
            if status["running"] >= max(1, self.cluster.slots // 2) or waited > BUSY_WAIT:
                return status, waited
            if self.done.wait(0.05):
                return status, waited

    def nodes_back(self, since: float) -> float | None:
        """Seconds from the kill until every slot is registered again (None: not in 30 s).
        Node processes may end meanwhile (a task's timeout): only the broker and the
        supervisors are watched."""
        cluster = self.cluster
        watched = [p for p in (cluster.broker, *cluster.znodes.values()) if p is not None]
        with contextlib.suppress(ClientError):
            cluster.wait_for(
                lambda: len(cluster.node_names()) >= cluster.slots,
                "the nodes to register again",
                timeout=30,
                processes=watched,
            )
            return round(time.time() - since, 2)
        return None


# =============================================================================== the samples

TICK = 0.5  # seconds between looks at which node processes live


@dataclass
class Life:
    """When a node process was first and last seen alive, and first seen gone."""

    first: float
    last: float
    gone: float | None = None


@dataclass
class Series:
    """One process's samples: (time.time(), RSS in MB, open fds)."""

    label: str
    pid: int
    points: list[tuple[float, float, int]] = field(default_factory=list)


class Sampler(threading.Thread):
    """Every TICK s which node processes live; every --sample-interval s the RSS and fds of
    each process and the store's size."""

    def __init__(self, cluster: SoakCluster, args: argparse.Namespace) -> None:
        super().__init__(daemon=True, name="sampler")
        self.cluster, self.args = cluster, args
        self.lives: dict[int, Life] = {}
        self.series: dict[int, Series] = {}
        self.store: list[tuple[float, int, int]] = []  # (time, store bytes, -wal bytes)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.looked = threading.Condition()
        self.looks = 0
        self.registered: set[int] = set()  # node processes, by the broker's last STATUS

    def run(self) -> None:
        try:
            next_sample = 0.0
            while not self.done.is_set():
                now = time.time()
                nodes = self.look(now)
                if now >= next_sample:
                    self.sample(now, nodes)
                    next_sample = now + self.args.sample_interval
                self.done.wait(TICK)
        except BaseException as exc:
            self.error = exc

    def look(self, now: float) -> dict[int, str]:
        """The node processes alive now, each with its label; updates `lives`."""
        supervisors = {p.pid: name for name, p in self.cluster.znodes.items()}
        children = children_of(set(supervisors))
        alive = {pid: f"{supervisors[parent]} process" for pid, parent in children.items()}
        for pid in alive:
            life = self.lives.setdefault(pid, Life(now, now))
            life.last = now
        for pid, life in self.lives.items():
            if pid not in alive and life.gone is None:
                life.gone = now
        with self.looked:
            self.looks += 1
            self.looked.notify_all()
        return alive | {pid: f"znode {name}" for pid, name in supervisors.items()}

    def next_look(self, timeout: float = 5.0) -> None:
        """Wait until the sampler has looked at the processes once more from now."""
        with self.looked:
            seen = self.looks
            self.looked.wait_for(lambda: self.looks > seen or not self.is_alive(), timeout)

    def sample(self, now: float, nodes: dict[int, str]) -> None:
        """The broker, the supervisors and the registered node processes: a supervisor's
        spare process waits unregistered, with fewer sockets, until it takes over."""
        brokers = {pid: f"broker {i + 1}" for i, pid in enumerate(self.cluster.broker_pids)}
        broker = self.cluster.broker
        if broker is not None and broker.alive() and broker.pid in brokers:
            self.measure(now, broker.pid, brokers[broker.pid])
        registered = self.registered_pids()
        for pid, label in nodes.items():
            if not label.endswith(" process") or pid in registered:
                self.measure(now, pid, label)
        self.store.append((now, *store_sizes(self.cluster.store)))

    def registered_pids(self) -> set[int]:
        """The node processes the broker lists; the last list seen while it is silent."""
        with contextlib.suppress(BrokerTimeout, BrokerUnreachable):
            self.registered = {node["pid"] for node in self.cluster.status()["nodes"]}
        return self.registered

    def measure(self, now: float, pid: int, label: str) -> None:
        try:
            rss = read_rss(pid)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError):
            return  # it ended while we looked
        self.series.setdefault(pid, Series(label, pid)).points.append((now, rss, fds))


def read_rss(pid: int) -> float:
    """VmRSS of the process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")  # a zombie


def store_sizes(store: Path) -> tuple[int, int]:
    sizes = []
    for path in (store, store.with_name(store.name + "-wal")):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


# ================================================================================ the verdict

MIN_POINTS, MIN_SPAN = 5, 60.0
KEEP_RESULTS = 300.0  # seconds the broker keeps answers by default (--keep-results)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (time, value) per hour; None for too few or too short."""
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < MIN_SPAN:
        return None
    times, values = zip(*points, strict=True)
    if len(set(values)) == 1:
        return 0.0
    return statistics.linear_regression(times, values).slope * 3600


def series_report(series: Series, warm_up: float, started: float) -> dict[str, Any]:
    points = series.points
    after = [p for p in points if p[0] >= points[0][0] + warm_up]
    rss_slope = slope_per_hour([(t, rss) for t, rss, _ in after])
    fd_slope = slope_per_hour([(t, float(fds)) for t, _, fds in after])
    return {
        "label": series.label,
        "pid": series.pid,
        "from": round(max(0.0, points[0][0] - started), 1),
        "to": round(points[-1][0] - started, 1),
        "samples": len(points),
        "samples_after_warm_up": len(after),
        "rss_mb": [round(points[0][1], 1), round(points[-1][1], 1)],
        "rss_mb_max": round(max(p[1] for p in points), 1),
        "fds": [points[0][2], points[-1][2]],
        "fds_max": max(p[2] for p in points),
        "rss_mb_per_hour": None if rss_slope is None else round(rss_slope, 2),
        "fds_per_hour": None if fd_slope is None else round(fd_slope, 2),
    }


def processes_report(sampler: Sampler, warm_up: float, started: float) -> dict[str, Any]:
    """Brokers and supervisors one by one; node processes in brief, those with a slope in
    full (a node process's life is short when tasks time out)."""
    reports = [series_report(s, warm_up, started) for s in sampler.series.values() if s.points]
    nodes = [r for r in reports if r["label"].endswith(" process")]
    sloped = [r for r in nodes if r["rss_mb_per_hour"] is not None]
    return {
        "long_lived": [r for r in reports if not r["label"].endswith(" process")],
        "node_processes": {
            "sampled": len(nodes),
            "with_slope": len(sloped),
            "rss_mb_per_hour_max": max((r["rss_mb_per_hour"] for r in sloped), default=None),
            "fds_per_hour_max": max((r["fds_per_hour"] for r in sloped), default=None),
            "rss_mb_max": max((r["rss_mb_max"] for r in nodes), default=None),
            "fds_max": max((r["fds_max"] for r in nodes), default=None),
        },
        "node_processes_with_slope": sloped,
    }


def percentiles(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    cuts = statistics.quantiles(values, n=100) if len(values) > 1 else [values[0]] * 99
    return {
        "n": len(values),
        "p50_ms": round(cuts[49] * 1e3, 2),
        "p99_ms": round(cuts[98] * 1e3, 2),
    }


def latency_report(tasks: list[Task], started: float, duration: float) -> dict[str, Any]:
    """p50 and p99 of soak_ok round trips in the first and the last quarter of the run."""
    report = {}
    for stream in ("execute", "future"):
        trips = [t for t in tasks if t.stream == stream and t.function == OK and t.round_trip]
        first = [t.round_trip for t in trips if t.submitted < started + duration / 4]
        last = [t.round_trip for t in trips if t.submitted >= started + duration * 3 / 4]
        report[stream] = {
            "first_quarter": percentiles([r for r in first if r is not None]),
            "last_quarter": percentiles([r for r in last if r is not None]),
        }
    return report


def store_report(samples: list[tuple[float, int, int]], warm_up: float) -> dict[str, Any]:
    """The store file and its WAL: first, last and largest sizes, and the slope of the two
    together after the warm-up."""
    if not samples:
        return {}
    mb = 1 / (1 << 20)
    after = [(t, (db + wal) * mb) for t, db, wal in samples if t >= samples[0][0] + warm_up]
    slope = slope_per_hour(after)

    def sizes(sample: tuple[float, int, int]) -> dict[str, float]:
        return {"db_mb": round(sample[1] * mb, 2), "wal_mb": round(sample[2] * mb, 2)}

    return {
        "start": sizes(samples[0]),
        "end": sizes(samples[-1]),
        "max": {
            "db_mb": round(max(s[1] for s in samples) * mb, 2),
            "wal_mb": round(max(s[2] for s in samples) * mb, 2),
        },
        "mb_per_hour": None if slope is None else round(slope, 2),
    }


END_STATUS = ["queued", "running", "held", "unclaimed", "results_kept", "results_bytes"]
END_STATUS += ["dead_letters"]


class Deaths:
    """Whether a node process died between two moments: SIGKILLed by the run, or seen
    gone by the sampler (stopped after a task's timeout, say) and not seen alive since."""

    def __init__(self, kills: list[Kill], lives: dict[int, Life]) -> None:
        self.kills, self.lives = kills, lives

    def killed(self, pid: int, start: float, end: float) -> bool:
        return any(k.pid == pid and start <= k.at <= end for k in self.kills if k.kind == "node")

    def died(self, pid: int, start: float, end: float) -> bool:
        life = self.lives.get(pid)
        gone = life is not None and life.gone is not None and life.last < end
        return gone or self.killed(pid, start, end)

    def broker_kill(self, start: float, end: float) -> Kill | None:
        """The broker kill between an execution that started at `start` and one at `end`.
        A RUN the killed broker sent may start a few ms after the kill: until its
        successor listened, an execution counts as one from before."""
        return next(
            (
                k
                for k in self.kills
                if k.kind == "broker" and start < (k.listening or k.at) and k.at < end
            ),
            None,
        )


def rerun_problems(
    task: Task, starts: list[Execution], raised: list[float], deaths: Deaths, task_timeout: float
) -> tuple[str | None, str | None]:
    """(a retry no one asked for, a rerun the broker kill caused) of this task, or None."""
    retried = broker_rerun = None
    for first, then in itertools.pairwise(starts):
        kill = deaths.broker_kill(first.at, then.at)
        if kill is not None and not deaths.killed(first.pid, first.at, then.at):
            broker_rerun = (
                f"task {task.key} ({task.stream} {task.function}, id {task.task_id}): attempt "
                f"{first.attempt} started {kill.at - first.at:.3f} s before the kill in pid "
                f"{first.pid}, attempt {then.attempt} {then.at - kill.at:.3f} s after it in pid "
                f"{then.pid}"
            )
        if kill is not None:
            continue
        raised_first = any(first.at <= r < then.at for r in raised)
        if raised_first and not deaths.killed(first.pid, first.at, then.at):
            retried = f"task {task.key} ({task.stream} {task.function}): ran again after it raised"
        ran_out = first.at + task_timeout
        if (
            task.function == SLEEP
            and then.at >= ran_out
            and not deaths.killed(first.pid, first.at, ran_out)
        ):
            retried = (
                f"task {task.key} ({task.stream} {task.function}): ran again after its timeout"
            )
    return retried, broker_rerun


def executions_by_key(directory: Path) -> tuple[dict[int, list[Execution]], dict[int, list[float]]]:
    starts: dict[int, list[Execution]] = {}
    raised: dict[int, list[float]] = {}
    for line in read_executions(directory):
        if line.event == "start":
            starts.setdefault(line.key, []).append(line)
        else:
            raised.setdefault(line.key, []).append(line.at)
    return starts, raised


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    duplicated_causes: Counter[str] = field(default_factory=Counter)
    retried_unasked: list[str] = field(default_factory=list)
    attempts_unknown: int = 0
    broker_kill_reruns: list[str] = field(default_factory=list)
    executions: int = 0
    never_executed: int = 0


def judge_tasks(
    tasks: list[Task], records: Path, deaths: Deaths, args: argparse.Namespace
) -> Findings:
    starts, raised = executions_by_key(records)
    found = Findings(executions=sum(len(s) for s in starts.values()))
    for task in tasks:
        runs = starts.get(task.key, [])
        if task.answered is None:
            found.lost.append(f"task {task.key} ({task.stream} {task.function}): {task.problem}")
            continue
        found.never_executed += not runs
        retried, rerun = rerun_problems(
            task, runs, raised.get(task.key, []), deaths, args.task_timeout
        )
        if task.wrong is not None:
            found.wrong.append(f"task {task.key} ({task.stream} {task.function}): {task.wrong}")
        if retried is not None:
            found.retried_unasked.append(retried)
        if rerun is not None:
            found.broker_kill_reruns.append(rerun)
        if task.attempts is None:
            found.attempts_unknown += task.exit_code is not None
        elif len(runs) > task.attempts:
            cause = duplicate_cause(runs, deaths)
            found.duplicated_causes[cause] += 1
            ran = ", ".join(f"attempt {r.attempt} in pid {r.pid}" for r in runs)
            found.duplicated.append(
                f"task {task.key} ({task.stream} {task.function}, id {task.task_id}): "
                f"{len(runs)} executions ({ran}), {task.attempts} attempts reported; {cause}"
            )
    return found


def duplicate_cause(runs: list[Execution], deaths: Deaths) -> str:
    """What came between a task's executions: the broker's kill, a kill of the node process
    that ran the earlier one, that process's end (after a timeout), or nothing seen."""
    for first, then in itertools.pairwise(runs):
        if deaths.broker_kill(first.at, then.at) is not None:
            return "broker kill"
        if deaths.killed(first.pid, first.at, then.at):
            return "node kill"
        if deaths.died(first.pid, first.at, then.at):
            return "node process ended"
    return "unexplained"


def by_stream(tasks: list[Task]) -> dict[str, dict[str, int]]:
    """Per stream: tasks, answered, and answers by function and exit code."""
    table: dict[str, Counter[str]] = {}
    for task in tasks:
        counts = table.setdefault(task.stream, Counter())
        counts["tasks"] += 1
        if task.answered is not None:
            counts["answered"] += 1
            counts[f"{task.function} exit {task.exit_code}"] += 1
    return {stream: dict(sorted(counts.items())) for stream, counts in sorted(table.items())}


def analyse(run: RunRecord) -> dict[str, Any]:
    """The figures of the run, the promises it broke, and notes."""
    args = run.args
    tasks = list(run.ledger.tasks.values())
    deaths = Deaths(run.kills, run.sampler.lives)
    found = judge_tasks(tasks, args.records, deaths, args)
    warm_up = args.warm_up if args.warm_up is not None else max(0.2 * args.duration, 60.0)
    node_kills = [k for k in run.kills if k.kind == "node"]
    report: dict[str, Any] = {
        "duration": args.duration,
        "wall_seconds": round(run.wall, 1),
        "seed": args.seed,
        "started_at": run.started,  # time.time(); the times of kills and samples count from it
        "rate": args.rate,
        "tasks": len(tasks),
        "answered": run.ledger.answered,
        "answered_per_second": round(run.ledger.answered / args.duration, 1),
        "lost": len(found.lost),
        "wrong": len(found.wrong),
        "duplicated": len(found.duplicated),
        "duplicated_causes": dict(found.duplicated_causes),
        "retried_unasked": len(found.retried_unasked),
        "attempts_unknown": found.attempts_unknown,
        "broker_kill_reruns": len(found.broker_kill_reruns),
        "executions": found.executions,
        "never_executed": found.never_executed,
        "node_kills": len(node_kills),
        "broker_kills": len(run.kills) - len(node_kills),
        "node_kills_skipped": run.skipped,
        "dead_letters_purged": run.purged,
        "by_stream": by_stream(tasks),
        "kills": [kill_report(k, run.started) for k in run.kills],
        "warm_up_seconds": warm_up,
        "processes": processes_report(run.sampler, warm_up, run.started),
        "latency": latency_report(tasks, run.started, args.duration),
        "store": store_report(run.sampler.store, warm_up),
        "broker_counters": run.status["counters"],
        "broker_at_end": {key: run.status.get(key) for key in END_STATUS},
        "samples": {
            "lost": found.lost[:10],
            "wrong": found.wrong[:10],
            "duplicated": found.duplicated[:10],
            "retried_unasked": found.retried_unasked[:10],
            "broker_kill_reruns": found.broker_kill_reruns[:10],
        },
    }
    return report | verdict(report, args)


def kill_report(kill: Kill, started: float) -> dict[str, Any]:
    figures = asdict(kill)
    figures["at"] = round(kill.at - started, 2)
    if kill.listening is not None:
        figures["listening"] = round(kill.listening - started, 2)
    return figures


def verdict(report: dict[str, Any], args: argparse.Namespace) -> dict[str, list[str]]:
    """The promises the run broke (exit status 1), and notes on what looks off."""
    broken = [f"{report[k]} {k}" for k in ("lost", "wrong", "duplicated") if report[k]]
    return {"broken": broken + steep_slopes(report, args), "notes": notes_on(report)}


def steep_slopes(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Processes growing faster than --max-rss-slope or --max-fd-slope, when given."""
    processes = report["processes"]
    everyone = processes["long_lived"] + processes["node_processes_with_slope"]
    limits = [
        ("rss_mb_per_hour", args.max_rss_slope, "MB/h"),
        ("fds_per_hour", args.max_fd_slope, "fds/h"),
    ]
    return [
        f"{r['label']} (pid {r['pid']}): {r[key]} {unit} > {limit}"
        for key, limit, unit in limits
        if limit is not None
        for r in everyone
        if r[key] is not None and r[key] > limit
    ]


def notes_on(report: dict[str, Any]) -> list[str]:
    notes = []
    if report["duplicated"]:
        causes = ", ".join(f"{c} {n}" for c, n in report["duplicated_causes"].items())
        notes.append(f"{report['duplicated']} tasks ran beyond their attempts ({causes})")
    if report["retried_unasked"]:
        notes.append(
            f"{report['retried_unasked']} tasks ran again after they raised or timed out, "
            "which their retry_on does not ask for"
        )
    if report["broker_kill_reruns"]:
        notes.append(f"{report['broker_kill_reruns']} tasks ran again after the broker kill")
    if report["attempts_unknown"]:
        notes.append(f"{report['attempts_unknown']} answers' attempts could not be fetched")
    if report["never_executed"]:
        notes.append(f"{report['never_executed']} answered tasks have no recorded execution")
    if report["node_kills_skipped"]:
        notes.append(f"{report['node_kills_skipped']} node kills skipped")
    if report["warm_up_seconds"] < KEEP_RESULTS:
        notes.append(
            f"the broker keeps answers {KEEP_RESULTS:g} s (zbroker start --keep-results, up to "
            f"64 MiB): a warm-up of {report['warm_up_seconds']:g} s leaves their filling in "
            "the broker's slopes and the store's"
        )
    return notes


# ==================================================================================== the run


@dataclass
class RunRecord:
    """What the run leaves for the analysis."""

    args: argparse.Namespace
    ledger: Ledger
    sampler: Sampler
    kills: list[Kill]
    started: float
    wall: float
    status: dict[str, Any]  # the broker's STATUS at the end
    skipped: int
    purged: int


def errors(threads: list[Any]) -> Iterator[str]:
    """What went wrong in the threads that failed (each keeps its exception in `error`)."""
    for thread in threads:
        if thread.error is not None:
            yield f"the {thread.name} thread failed: {thread.error!r}"


def watch(
    streams: list[Stream], others: list[Any], killer: Killer, load: Load, console: Console
) -> None:
    """Show progress until the end of the run, then until the streams have drained (a live
    line on a terminal, else a line every 10 s); stop early if a thread failed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    args, ledger = load.args, load.ledger
    started, last_line = time.monotonic(), 0.0
    columns = [
        TextColumn("soak"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    ]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=args.duration)
        while any(s.is_alive() for s in streams):  # they end once drained
            elapsed = time.monotonic() - started
            if elapsed >= args.duration:
                load.stopping.set()
            if elapsed > args.duration + args.timeout + 90:
                raise SetupFailed("the load did not drain after the run's end")
            if failed := next(errors([*streams, *others]), None):
                raise SetupFailed(failed)
            kills = Counter(k.kind for k in killer.kills)
            line = (
                f"{min(elapsed, args.duration):.0f}/{args.duration:g} s, "
                f"{ledger.answered:,} answered, {kills['node']} node kills, "
                f"{kills['broker']} broker kill" + (", draining" if load.stopping.is_set() else "")
            )
            bar.update(task, completed=min(elapsed, args.duration), description=line)
            if not console.is_terminal and elapsed - last_line >= 10:
                last_line = elapsed
                console.log(line)
            alive = [s for s in streams if s.is_alive()]
            if alive:
                alive[0].join(0.25)


def run(args: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    """Start the cluster, run the load under kills, stop everything, judge the run."""
    args.records = workdir / "executions"
    args.records.mkdir()
    args.workdir = workdir
    path = os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")]))
    cluster = SoakCluster(args, workdir, {"PYTHONPATH": path, DIR_VARIABLE: str(args.records)})
    load = Load(args, Ledger(), "", Children())
    sampler = Sampler(cluster, args)
    killer = Killer(cluster, args, console.log)
    streams: list[Stream] = []
    try:
        cluster.start_broker()
        for _ in range(args.nodes):
            cluster.start_znode()
        cluster.wait_for_nodes(cluster.slots)
        load.url = cluster.url
        streams = make_streams(load, args.seed)
        sampler.start()
        started = time.time()
        killer.started = time.monotonic()
        for thread in [killer, *streams]:
            thread.start()
        watch(streams, [killer, sampler], killer, load, console)
        wall = time.time() - started
        killer.done.set()
        killer.join()  # a broker restart under way ends before the last STATUS
        status = cluster.status(timeout=10)
        sampler.next_look()  # which node processes live after the last execution
        sampler.store.append((time.time(), *store_sizes(cluster.store)))
    finally:
        load.stopping.set()
        load.children.close()
        killer.done.set()
        sampler.done.set()
        for thread in (killer, sampler):
            if thread.is_alive():
                thread.join(60)
        cluster.close()
    purged = sum(getattr(s, "purged", 0) for s in streams)
    record = RunRecord(
        args, load.ledger, sampler, killer.kills, started, wall, status, killer.skipped, purged
    )
    return analyse(record)


# ================================================================================= the report

FIGURES = ["duration", "wall_seconds", "tasks", "answered", "answered_per_second", "lost"]
FIGURES += ["wrong", "duplicated", "retried_unasked", "broker_kill_reruns", "attempts_unknown"]
FIGURES += ["executions"]
FIGURES += ["node_kills", "broker_kills", "dead_letters_purged", "seed"]
COUNTERS = ["adopted", "restored_unclaimed", "claims_refused", "claims_ignored"]


def print_report(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    summary = Table(title="Soak run", show_header=False)
    for key in FIGURES:
        summary.add_row(key.replace("_", " "), f"{report[key]:,}")
    streams = Table(title="Answers by stream")
    streams.add_column("stream")
    streams.add_column("answers")
    for stream, counts in report["by_stream"].items():
        streams.add_row(stream, ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    console.print(summary, streams, processes_table(report), other_tables(report))
    for kind, lines in report["samples"].items():
        for line in lines[:5]:
            console.print(f"  {kind}: {line}", style="yellow")
    for line in report["notes"]:
        console.print(f"  {line}", style="yellow")
    outcome = "; ".join(report["broken"]) or "every promise held"
    console.print(outcome, style="bold red" if report["broken"] else "bold green")


def processes_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    processes = report["processes"]
    table = Table(title=f"Processes (slopes after a {report['warm_up_seconds']:g} s warm-up)")
    for column in ("process", "pid", "seconds", "RSS MB", "MB/h", "fds", "fds/h"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for r in processes["long_lived"]:
        table.add_row(
            r["label"],
            str(r["pid"]),
            f"{r['from']:.0f}..{r['to']:.0f}",
            "→".join(map(str, r["rss_mb"])),
            shown(r["rss_mb_per_hour"]),
            "→".join(map(str, r["fds"])),
            shown(r["fds_per_hour"]),
        )
    nodes = processes["node_processes"]
    table.add_row(
        f"node processes ({nodes['sampled']}, {nodes['with_slope']} with a slope)",
        "",
        "",
        f"max {shown(nodes['rss_mb_max'])}",
        f"max {shown(nodes['rss_mb_per_hour_max'])}",
        f"max {shown(nodes['fds_max'])}",
        f"max {shown(nodes['fds_per_hour_max'])}",
    )
    return table


def shown(value: Any) -> str:
    """A figure for the table; '-' where there is none (too few samples for a slope)."""
    return "-" if value is None else str(value)


def other_tables(report: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    latency = Table(title="Round trips of soak_ok (ms)")
    for column in ("stream", "quarter", "n", "p50", "p99"):
        latency.add_column(column)
    for stream, quarters in report["latency"].items():
        for quarter, figures in quarters.items():
            cells = (
                ["", "", ""]
                if figures is None
                else [str(figures[k]) for k in ("n", "p50_ms", "p99_ms")]
            )
            latency.add_row(stream, quarter.replace("_", " "), *cells)
    other = Table(title="Store and broker", show_header=False)
    store = report["store"]
    for when in ("start", "end", "max"):
        sizes = store[when]
        other.add_row(f"store {when}", f"{sizes['db_mb']} MB + {sizes['wal_mb']} MB WAL")
    other.add_row("store growth", f"{shown(store['mb_per_hour'])} MB/h after the warm-up")
    end = report["broker_at_end"]
    other.add_row(
        "broker at the end",
        f"{end['results_kept']:,} answers kept ({end['results_bytes'] / (1 << 20):.1f} MiB), "
        f"{end['dead_letters']:,} dead letters",
    )
    for kill in report["kills"]:
        if kill["kind"] == "broker":
            other.add_row(
                "broker kill",
                f"at {kill['at']} s, {kill['running']} running, "
                f"nodes back after {kill['nodes_back']} s",
            )
            before = kill["counters"] or {}
            other.add_row("counters before it", counters_text(before))
    other.add_row("counters at the end", counters_text(report["broker_counters"]))
    return Group(latency, other)


def counters_text(counters: dict[str, Any]) -> str:
    return ", ".join(f"{name} {counters.get(name, 0)}" for name in COUNTERS)


# ==================================================================================== the CLI


def main() -> None:
    serve_run(parse_args(), "ztb-soak-", run, print_report)


OPTIONS: list[tuple[str, type, Any, str]] = [
    ("--duration", float, 3600.0, "seconds of load"),
    ("--node-kill-interval", float, 300.0, "seconds between node process kills; 0: none"),
    ("--broker-kill-at", float, 0.5, "kill the broker once, at this share of the run; 0: never"),
    ("--nodes", int, 3, "znode supervisors"),
    ("--concurrency", int, 2, "node processes per znode, one slot each"),
    ("--rate", float, 150.0, "tasks per second in all (map 70 %%, futures 20 %%, execute 10 %%)"),
    ("--map-clients", int, 2, "threads running maps, each with its own Client"),
    ("--window", int, 64, "tasks in flight per map"),
    ("--delay", float, 0.01, "seconds soak_ok and soak_raise hold their slot"),
    ("--timeouts-per-minute", float, 6.0, "soak_sleep tasks, which must time out; 0: none"),
    ("--task-timeout", float, 0.5, "the soak_sleep tasks' task_timeout (they sleep 4 times it)"),
    ("--zsubmit-interval", float, 10.0, "seconds between zsubmit processes; 0: none"),
    ("--purge-interval", float, 60.0, "seconds between purges of answered dead letters; 0: none"),
    ("--heartbeat-interval", float, 1.0, "zbroker start --heartbeat-interval"),
    ("--liveness", int, 3, "zbroker start --liveness"),
    ("--retries", int, 5, "zbroker start --retries: extra attempts after crashes"),
    ("--timeout", float, 60.0, "seconds of silence after which a client gives up (lost)"),
    ("--sample-interval", float, 5.0, "seconds between samples of RSS, fds and the store"),
    (
        "--warm-up",
        float,
        None,
        "seconds of each process's samples left out of its slopes "
        "(default: the longer of 20 %% of the run and 60 s)",
    ),
    ("--max-rss-slope", float, None, "MB/h: a process growing faster breaks a promise"),
    ("--max-fd-slope", float, None, "fds/h: a process opening more breaks a promise"),
    ("--seed", int, None, "seed of the load and the kills (default: random; reported)"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    for flag, kind, default, text in OPTIONS:
        text += "" if default is None else f" (default {default:g})"
        add(flag, type=kind, default=default, metavar="N" if kind is int else "X", help=text)
    text = "an argument for zbroker start, e.g. --broker-arg=--keep-results=60 (repeatable)"
    add("--broker-arg", action="append", default=[], metavar="ARG", help=text)
    add("--json", action="store_true", help="print the report as JSON on stdout")
    add("--keep-dir", action="store_true", help="keep the logs, store and record files")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**32)
    if args.duration <= 0 or args.rate <= 0 or args.nodes < 1 or args.concurrency < 1:
        parser.error("--duration, --rate, --nodes and --concurrency must be positive")
    return args


if __name__ == "__main__":
    main()
