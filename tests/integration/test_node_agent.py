"""`znode` as a real process against a scripted broker: one ROUTER in the test process.

The scripted broker answers nothing by itself: each test registers the node, sends RUN,
DISCONNECT or silence, and checks what the node sends back. While a test waits, the broker
heartbeats the nodes it registered (unless told to go silent) so they keep it for alive.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.protocol import (
    ERR_NOT_REGISTERED,
    Batch,
    Deregister,
    Disconnect,
    Error,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Registered,
    Replaces,
    Result,
    Run,
    decode,
    dumps_payload,
    encode,
    encode_batch,
    loads_payload,
)
from node.registry import resolve
from tests.support import Proc, Spawner, wait_until

INTERVAL = 0.2  # the heartbeat interval the scripted broker gives nodes
LIVENESS = 3
KEEPALIVE = 0.1  # how often the scripted broker heartbeats registered nodes


@dataclass
class Received:
    at: float
    identity: bytes
    message: Message


@dataclass
class ScriptedBroker:
    """A ROUTER on 127.0.0.1 that records every message a node sends it."""

    context: zmq.Context[Any]
    router: zmq.Socket[Any] = field(init=False)
    url: str = field(init=False)
    inbox: list[Received] = field(default_factory=list)
    alive: list[Proc] = field(default_factory=list)  # waits fail early if one of these dies
    keepalive: set[bytes] = field(default_factory=set)  # identities we heartbeat
    _last_beat: float = 0.0

    def __post_init__(self) -> None:
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.url = self.router.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, identity: bytes, message: Message) -> None:
        self.router.send_multipart([identity, b"", *encode(message)])

    def send_raw(self, identity: bytes, *frames: bytes) -> None:
        self.router.send_multipart([identity, *frames])

    def pump(self, timeout: float = 0.02) -> None:
        """Receive what arrives within `timeout`; heartbeat registered nodes when due."""
        now = time.monotonic()
        if self.keepalive and now - self._last_beat >= KEEPALIVE:
            for identity in self.keepalive:
                self.send(identity, Heartbeat())
            self._last_beat = now
        if not self.router.poll(int(timeout * 1000)):
            return
        while self.router.poll(0):
            identity, delimiter, *frames = self.router.recv_multipart()
            assert delimiter == b"", f"node sent no empty delimiter: {frames!r}"
            try:
                message = decode(frames)
            except ProtocolError as exc:
                raise AssertionError(f"node sent an undecodable message: {exc.message}") from None
            # A node may send several RESULTs in one message: keep them one by one.
            items = message.items if isinstance(message, Batch) else (message,)
            for item in items:
                assert not isinstance(item, ProtocolError), f"node sent a bad pair: {item}"
                self.inbox.append(Received(time.monotonic(), identity, item))

    def take(
        self,
        kind: type[Any],
        timeout: float = 5.0,
        where: Callable[[Received], bool] = lambda r: True,
    ) -> Received:
        """The first message of `kind` matching `where` not taken yet (waits for it)."""

        def find() -> Received | None:
            self.pump()
            for index, item in enumerate(self.inbox):
                if type(item.message) is kind and where(item):
                    return self.inbox.pop(index)
            return None

        what = f"{kind.__name__} from the node"
        return wait_until(find, timeout, what=what, alive=self.alive, interval=0)

    def count(self, kind: type[Any], identity: bytes | None = None) -> int:
        return sum(
            1 for r in self.inbox if type(r.message) is kind and identity in (None, r.identity)
        )

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Keep pumping (and heartbeating) until `predicate` holds."""

        def check() -> bool:
            self.pump()
            return predicate()

        wait_until(check, timeout, what=what, interval=0)

    def register(self, timeout: float = 15.0, name: str | None = None) -> tuple[bytes, Register]:
        """Take a REGISTER (from the node called `name`, if given) and answer REGISTERED."""

        def named(r: Received) -> bool:
            return name is None or getattr(r.message, "name", None) == name

        got = self.take(Register, timeout, named)
        assert isinstance(got.message, Register)
        self.send(got.identity, Registered(f"node-{len(self.keepalive)}", INTERVAL, LIVENESS))
        self.keepalive.add(got.identity)
        return got.identity, got.message

    def run(
        self,
        identity: bytes,
        task_id: str,
        function: str,
        *args: Any,
        timeout: float | None = None,
        attempt: int = 1,
    ) -> None:
        self.send(identity, Run(task_id, function, dumps_payload(list(args)), attempt, timeout))

    def result(self, task_id: str, timeout: float = 5.0) -> tuple[bytes, Result]:
        got = self.take(Result, timeout, lambda r: getattr(r.message, "task_id", "") == task_id)
        assert isinstance(got.message, Result)
        return got.identity, got.message

    def call(self, identity: bytes, function: str, *args: Any) -> Result:
        task_id = f"t{time.monotonic_ns()}"
        self.run(identity, task_id, function, *args)
        return self.result(task_id)[1]


@pytest.fixture
def broker() -> Iterator[ScriptedBroker]:
    context: zmq.Context[Any] = zmq.Context()
    scripted = ScriptedBroker(context)
    try:
        yield scripted
    finally:
        scripted.router.close(linger=0)
        context.term()


def start_node(
    spawner: Spawner, broker: ScriptedBroker, *extra: str, name: str = "n1", threads: int = 2
) -> Proc:
    proc = spawner.start(
        name,
        "znode",
        "--broker",
        broker.url,
        "--functions",
        "math",
        "--functions",
        "util",
        "--name",
        name,
        "--threads",
        str(threads),
        "--heartbeat-interval",
        str(INTERVAL),
        "--log-level",
        "DEBUG",
        *extra,
    )
    broker.alive.append(proc)
    return proc


def single_node(spawner: Spawner, broker: ScriptedBroker, threads: int = 2) -> bytes:
    start_node(spawner, broker, "--concurrency", "1", threads=threads)
    return broker.register()[0]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def test_register_carries_the_node_and_its_capacity(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    proc = start_node(spawner, broker, "--concurrency", "1", threads=3)
    _, register = broker.register()
    assert register.name == "n1"  # one process: the name as given, no ".0"
    assert register.host == socket.gethostname()
    # `znode` is the supervisor; the node process registering is its child.
    assert register.pid != proc.pid and parent_of(register.pid) == proc.pid
    assert register.replaces is None
    assert register.capacity == 3
    assert list(register.functions) == sorted(resolve(["math", "util"]))
    # Registered and idle: the node heartbeats about once per interval.
    first = broker.take(Heartbeat, timeout=2)
    second = broker.take(Heartbeat, timeout=2)
    assert 0.5 * INTERVAL <= second.at - first.at <= 3 * INTERVAL


def test_runs_tasks_and_reports_every_outcome(spawner: Spawner, broker: ScriptedBroker) -> None:
    node = single_node(spawner, broker)

    ok = broker.call(node, "multiply", 5, 10)
    assert (ok.exit_code, ok.payload, ok.error) == (0, b"50", None)

    unknown = broker.call(node, "no_such_function")
    assert unknown.exit_code == 127
    assert unknown.error is not None and unknown.error.type == "UnknownFunction"

    failed = broker.call(node, "fail", "on purpose")
    assert failed.exit_code == 1
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("RuntimeError", "on purpose")

    bad_args = broker.call(node, "multiply", 1, 2, 3)
    assert bad_args.exit_code == 2
    assert bad_args.error is not None and "takes 2 arguments" in bad_args.error.message

    # Still serving after the failures, and big integers come back exact.
    big = broker.call(node, "sum_squares", 1, 10_000_000)
    assert big.exit_code == 0
    assert loads_payload(big.payload) == 333333383333335000000


def test_malformed_messages_are_ignored(spawner: Spawner, broker: ScriptedBroker) -> None:
    node = single_node(spawner, broker)
    broker.send_raw(node, b"no delimiter")
    broker.send_raw(node, b"", b"ZTB1", b"RUN", b"{not json", b"[]")
    broker.send_raw(node, b"", b"ZTB9", b"HEARTBEAT")
    broker.send_raw(node, b"", b"ZTB1", b"BOGUS")
    assert broker.call(node, "echo", "still here").payload == b'"still here"'


def test_heartbeats_flow_while_a_cpu_bound_function_runs(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    node = single_node(spawner, broker, threads=1)
    broker.take(Heartbeat, timeout=2)  # idle heartbeats have started
    broker.inbox.clear()
    broker.run(node, "spin", "spin", 1.2)
    _, result = broker.result("spin", timeout=5)
    assert result.exit_code == 0 and loads_payload(result.payload) > 0
    # Nothing else was sent during the spin, so every interval needed a heartbeat.
    assert broker.count(Heartbeat, node) >= 3


def test_silent_broker_makes_the_node_register_again(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    first = single_node(spawner, broker)
    broker.keepalive.clear()  # go silent
    started = time.monotonic()
    again = broker.take(Register, timeout=5)
    assert again.identity != first  # a fresh socket
    # Not before interval x liveness of silence.
    assert again.at - started >= INTERVAL * LIVENESS * 0.8
    broker.send(again.identity, Registered("node-again", INTERVAL, LIVENESS))
    broker.keepalive.add(again.identity)
    assert broker.call(again.identity, "add", 2, 3).payload == b"5"


def test_disconnect_makes_the_node_register_again_and_deliver_results(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    first = single_node(spawner, broker)
    broker.run(first, "slow", "sleep", 0.5)
    broker.send(first, Disconnect("forgot you"))
    broker.keepalive.discard(first)
    second, _ = broker.register(timeout=5)
    assert second != first
    # The task that was running when the broker forgot the node reports on the new socket.
    identity, result = broker.result("slow", timeout=5)
    assert identity == second
    assert (result.exit_code, result.payload) == (0, b"0.5")


def test_error_not_registered_makes_the_node_register_again(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    first = single_node(spawner, broker)
    broker.send(first, Error(ERR_NOT_REGISTERED, "who are you?"))
    broker.keepalive.discard(first)
    second, _ = broker.register(timeout=5)
    assert second != first
    assert broker.call(second, "multiply", 6, 7).payload == b"42"


def test_sigterm_deregisters_at_once_and_finishes_running_tasks(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    node = single_node(spawner, broker)
    proc = broker.alive[0]
    sent = time.monotonic()
    broker.run(node, "slow", "sleep", 1.0)
    broker.take(Heartbeat, 2, lambda r: r.at > sent)  # so the node has read the RUN
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    deregister = broker.take(Deregister, timeout=2)
    assert deregister.at - signalled < 0.5
    # A RUN that crossed the DEREGISTER is still run.
    broker.run(node, "late", "echo", "late")
    assert broker.result("late")[1].payload == b'"late"'
    _, slow = broker.result("slow", timeout=5)
    assert (slow.exit_code, slow.payload) == (0, b"1.0")
    broker.alive.clear()  # it is meant to exit now
    broker.wait(lambda: not proc.alive(), 5, "the node to exit")
    assert proc.popen.returncode == 0


def test_sigterm_during_an_inline_function_deregisters_at_once(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    node = single_node(spawner, broker, threads=1)  # the function runs in the socket thread
    proc = broker.alive[0]
    sent = time.monotonic()
    broker.run(node, "slow", "spin", 1.5)
    broker.take(Heartbeat, 2, lambda r: r.at > sent + 0.3)  # spinning, watchdog heartbeats
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    deregister = broker.take(Deregister, timeout=2)
    assert deregister.at - signalled < 0.5, "the watchdog did not deregister during the call"
    _, slow = broker.result("slow", timeout=5)
    assert slow.exit_code == 0
    assert broker.count(Deregister, node) == 0  # the one taken above is the only one
    broker.alive.clear()
    broker.wait(lambda: not proc.alive(), 5, "the node to exit")
    assert proc.popen.returncode == 0


def test_second_signal_exits_at_once_with_130(spawner: Spawner, broker: ScriptedBroker) -> None:
    node = single_node(spawner, broker)
    proc = broker.alive[0]
    sent = time.monotonic()
    broker.run(node, "long", "sleep", 30)
    broker.take(Heartbeat, 2, lambda r: r.at > sent)  # so the node has read the RUN
    proc.signal(signal.SIGINT)
    broker.take(Deregister, timeout=2)
    proc.signal(signal.SIGINT)
    broker.alive.clear()
    broker.wait(lambda: not proc.alive(), 3, "the node to exit")
    assert proc.popen.returncode == 130


def test_threads_run_tasks_at_the_same_time(spawner: Spawner, broker: ScriptedBroker) -> None:
    node = single_node(spawner, broker, threads=2)
    broker.run(node, "long", "sleep", 1.0)
    broker.run(node, "short", "sleep", 0.1)
    # Run one after the other, "short" would report after "long".
    short = broker.take(Result, timeout=5)
    assert getattr(short.message, "task_id", None) == "short"
    assert broker.result("long", timeout=5)[1].exit_code == 0


def test_concurrency_runs_node_processes_and_restarts_one_that_crashes(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    start_node(spawner, broker, "--concurrency", "2", name="sup", threads=1)
    first, reg0 = broker.register(name="sup.0")
    other, reg1 = broker.register(name="sup.1")
    assert reg0.capacity == reg1.capacity == 1
    assert reg0.pid != reg1.pid
    # Two processes: a task on each runs at once, each in its own process.
    broker.run(first, "long", "sleep", 1.0)
    pid = broker.call(other, "pid")
    assert loads_payload(pid.payload) == reg1.pid
    assert broker.count(Result) == 0  # "long" still running while "pid" answered
    assert broker.result("long")[1].exit_code == 0

    broker.run(first, "boom", "crash", 3)
    broker.keepalive.discard(first)
    again, reg0_again = broker.register(timeout=10, name="sup.0")
    assert again != first and reg0_again.pid != reg0.pid
    assert reg0_again.replaces == Replaces(reg0.pid, "exited with status 3")
    assert broker.call(again, "multiply", 6, 7).payload == b"42"
    assert broker.call(other, "multiply", 2, 3).payload == b"6"  # the other was untouched


def test_unknown_function_set_exits_2_with_advice(spawner: Spawner) -> None:
    proc = spawner.start("bad", "znode", "--functions", "maht", "--concurrency", "1")
    assert proc.wait(timeout=15) == 2
    assert "no function set 'maht': use a built-in set (math, util)" in proc.log()


def test_sigterm_before_any_broker_answers_exits_0(
    spawner: Spawner, broker: ScriptedBroker
) -> None:
    proc = start_node(spawner, broker, "--concurrency", "1")
    broker.take(Register, timeout=15)  # started; never answered
    proc.signal(signal.SIGTERM)
    broker.alive.clear()
    assert proc.wait(timeout=5) == 0


def test_a_batch_of_runs_is_run_and_answered(spawner: Spawner, broker: ScriptedBroker) -> None:
    node = single_node(spawner, broker, threads=4)
    runs = [Run(f"b{i}", "multiply", dumps_payload([i, 10])) for i in range(3)]
    broker.send_raw(node, b"", *encode_batch(runs))
    for i in range(3):
        _, result = broker.result(f"b{i}", timeout=5)
        assert loads_payload(result.payload) == i * 10
