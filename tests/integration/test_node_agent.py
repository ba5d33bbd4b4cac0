"""`znode` as a real process against the fake broker (tests/fakes.py) in the test process.

The fake broker answers nothing by itself: each test registers the node, sends RUN,
DISCONNECT, ERROR or silence, and checks what the node sends back. The fake broker
heartbeats the nodes it registered (until `keepalive` is emptied) so they keep it for alive.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from broker.protocol import (
    ERR_NOT_HOLDER,
    ERR_NOT_REGISTERED,
    RESULTS_HELD_BACK,
    Deregister,
    Disconnect,
    Error,
    Heartbeat,
    Register,
    Registered,
    Replaces,
    Result,
    Run,
    dumps_payload,
    encode_batch,
    encode_packed,
    loads_payload,
)
from client.cluster import Process
from node.registry import resolve
from tests.fakes import INTERVAL, LIVENESS, FakeBroker
from tests.support import Spawner, wait_until


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as fake:
        yield fake


def start_node(
    spawner: Spawner, broker: FakeBroker, *extra: str, name: str = "n1", threads: int = 2
) -> Process:
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


def single_node(spawner: Spawner, broker: FakeBroker, threads: int = 2) -> bytes:
    start_node(spawner, broker, "--concurrency", "1", threads=threads)
    return broker.register()[0]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def test_register_carries_the_node_and_its_capacity(spawner: Spawner, broker: FakeBroker) -> None:
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


def test_the_node_adopts_a_heartbeat_interval_its_broker_announces(
    spawner: Spawner, broker: FakeBroker
) -> None:
    start_node(spawner, broker, "--concurrency", "1")
    node, register = broker.register()
    assert register.adopts_interval  # it says it does (protocol.md 7.1)
    broker.take(Heartbeat, timeout=2)
    longer = 4 * INTERVAL
    broker.send(node, Heartbeat(interval=longer))
    told = time.monotonic()
    # Its heartbeats come once per new interval now (the fake broker's own heartbeats,
    # a sign of life, do not count as something the node sent).
    beats = [broker.take(Heartbeat, timeout=3, where=lambda r: r.at > told).at for _ in range(3)]
    gaps = [b - a for a, b in pairwise(beats)]
    assert all(0.8 * longer <= gap <= 1.5 * longer for gap in gaps), gaps


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_runs_tasks_and_reports_every_outcome(
    spawner: Spawner, broker: FakeBroker, threads: int
) -> None:
    node = single_node(spawner, broker, threads)

    ok = broker.call(node, "multiply", 5, 10)
    assert (ok.exit_code, ok.result, ok.error, ok.attempt) == (0, b"50", None, 1)

    broker.run(node, "retried", "add", 2, 3, attempt=3)  # each RESULT names its RUN's attempt
    assert broker.result("retried")[1] == Result("retried", 0, b"5", None, attempt=3)

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
    assert loads_payload(big.result) == 333333383333335000000


def test_malformed_messages_are_ignored(spawner: Spawner, broker: FakeBroker) -> None:
    node = single_node(spawner, broker)
    broker.send_raw(node, b"no delimiter")
    broker.send_raw(node, b"", b"ZTB1", b"RUN", b"{not json", b"[]")
    broker.send_raw(node, b"", b"ZTB9", b"HEARTBEAT")
    broker.send_raw(node, b"", b"ZTB1", b"BOGUS")
    assert broker.call(node, "echo", "still here").result == b'"still here"'


def test_heartbeats_flow_while_a_cpu_bound_function_runs(
    spawner: Spawner, broker: FakeBroker
) -> None:
    node = single_node(spawner, broker, threads=1)
    broker.take(Heartbeat, timeout=2)  # idle heartbeats have started
    broker.clear()
    broker.run(node, "spin", "spin", 1.2)
    _, result = broker.result("spin", timeout=5)
    assert result.exit_code == 0 and loads_payload(result.result) > 0
    # Nothing else was sent during the spin, so every interval needed a heartbeat.
    assert broker.count(Heartbeat, node) >= 3


def test_silent_broker_makes_the_node_register_again(spawner: Spawner, broker: FakeBroker) -> None:
    first = single_node(spawner, broker)
    broker.keepalive.clear()  # go silent
    started = time.monotonic()
    again = broker.take(Register, timeout=5)
    assert again.identity != first  # a fresh socket
    # Not before twice interval x liveness of silence, as the connection holds (a broker
    # whose loop stalls keeps its connections: protocol.md 7.2).
    assert again.at - started >= 2 * INTERVAL * LIVENESS * 0.9
    broker.send(again.identity, Registered("node-again", INTERVAL, LIVENESS))
    broker.keepalive.add(again.identity)
    assert broker.call(again.identity, "add", 2, 3).result == b"5"


def test_disconnect_makes_the_node_register_again_and_deliver_results(
    spawner: Spawner, broker: FakeBroker
) -> None:
    first = single_node(spawner, broker)
    broker.run(first, "slow", "sleep", 0.3, attempt=4)
    broker.send(first, Disconnect("forgot you"))
    broker.keepalive.discard(first)
    # Left unanswered, the REGISTER is sent again on a fresh socket a while later; the task
    # finishes meanwhile and its result waits for the registration.
    unanswered = broker.take(Register, timeout=5)
    assert unanswered.identity != first
    second, _ = broker.register(timeout=5)
    assert second not in (first, unanswered.identity)
    # The task that was running when the broker forgot the node reports on the new socket.
    identity, result = broker.result("slow", timeout=5)
    assert identity == second
    assert result == Result("slow", 0, b"0.3", None, attempt=4)


def test_error_not_registered_makes_the_node_register_again(
    spawner: Spawner, broker: FakeBroker
) -> None:
    first = single_node(spawner, broker)
    broker.send(first, Error(ERR_NOT_REGISTERED, "who are you?"))
    broker.keepalive.discard(first)
    second, _ = broker.register(timeout=5)
    assert second != first
    assert broker.call(second, "multiply", 6, 7).result == b"42"


def test_a_result_the_broker_refuses_is_logged_and_the_node_carries_on(
    spawner: Spawner, broker: FakeBroker
) -> None:
    node = single_node(spawner, broker)
    proc = broker.alive[0]
    refusal = "task gone: attempt 1 is not held by this node"
    broker.send(node, Error(ERR_NOT_HOLDER, refusal, "gone"))
    wanted = f"broker refused the result of task gone: {refusal}"
    wait_until(lambda: wanted in proc.log(), 5, what="the warning", alive=[proc])
    # Same socket, no new registration: the node goes on as before.
    assert broker.call(node, "multiply", 6, 7).result == b"42"
    assert broker.count(Register) == 0


def test_sigterm_deregisters_at_once_and_finishes_running_tasks(
    spawner: Spawner, broker: FakeBroker
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
    assert broker.result("late")[1].result == b'"late"'
    _, slow = broker.result("slow", timeout=5)
    assert (slow.exit_code, slow.result) == (0, b"1.0")
    broker.alive.clear()  # it is meant to exit now
    broker.wait(lambda: not proc.alive(), 5, "the node to exit")
    assert proc.popen.returncode == 0


def test_sigterm_during_an_inline_function_deregisters_at_once(
    spawner: Spawner, broker: FakeBroker
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


def test_second_signal_exits_at_once_with_130(spawner: Spawner, broker: FakeBroker) -> None:
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


def test_threads_run_tasks_at_the_same_time(spawner: Spawner, broker: FakeBroker) -> None:
    node = single_node(spawner, broker, threads=2)
    broker.run(node, "long", "sleep", 1.0)
    broker.run(node, "short", "sleep", 0.1)
    # Run one after the other, "short" would report after "long".
    short = broker.take(Result, timeout=5)
    assert getattr(short.message, "task_id", None) == "short"
    assert broker.result("long", timeout=5)[1].exit_code == 0


def test_concurrency_runs_node_processes_and_restarts_one_that_crashes(
    spawner: Spawner, broker: FakeBroker
) -> None:
    start_node(spawner, broker, "--concurrency", "2", name="sup", threads=1)
    first, reg0 = broker.register(name="sup.0")
    other, reg1 = broker.register(name="sup.1")
    assert reg0.capacity == reg1.capacity == 1
    assert reg0.pid != reg1.pid
    # Two processes: a task on each runs at once, each in its own process.
    broker.run(first, "long", "sleep", 1.0)
    pid = broker.call(other, "pid")
    assert loads_payload(pid.result) == reg1.pid
    assert broker.count(Result) == 0  # "long" still running while "pid" answered
    assert broker.result("long")[1].exit_code == 0

    broker.run(first, "boom", "crash", 3)
    broker.keepalive.discard(first)
    again, reg0_again = broker.register(timeout=10, name="sup.0")
    assert again != first and reg0_again.pid != reg0.pid
    assert reg0_again.replaces == Replaces(reg0.pid, "exited with status 3")
    assert broker.call(again, "multiply", 6, 7).result == b"42"
    assert broker.call(other, "multiply", 2, 3).result == b"6"  # the other was untouched


def test_unknown_function_set_exits_2_with_advice(spawner: Spawner) -> None:
    proc = spawner.start("bad", "znode", "--functions", "maht", "--concurrency", "1")
    assert proc.wait(timeout=15) == 2
    assert "no function set 'maht': not a built-in set (math, util)" in proc.log()


def test_sigterm_before_any_broker_answers_exits_0(spawner: Spawner, broker: FakeBroker) -> None:
    proc = start_node(spawner, broker, "--concurrency", "1")
    broker.take(Register, timeout=15)  # started; never answered
    proc.signal(signal.SIGTERM)
    broker.alive.clear()
    assert proc.wait(timeout=5) == 0


def test_a_batch_of_runs_is_run_and_answered(spawner: Spawner, broker: FakeBroker) -> None:
    node = single_node(spawner, broker, threads=4)
    runs = [Run(f"b{i}", "multiply", dumps_payload([i, 10])) for i in range(3)]
    broker.send_raw(node, b"", *encode_batch(runs))
    for i in range(3):
        _, result = broker.result(f"b{i}", timeout=5)
        assert loads_payload(result.result) == i * 10


def test_an_inline_node_sends_results_before_it_holds_back_too_many(
    spawner: Spawner, broker: FakeBroker
) -> None:
    """Results of tasks run back to back leave together, but a node starts no held task
    while RESULTS_HELD_BACK of them wait unsent: the broker counts on it when the node is
    lost (protocol.md 5.5)."""
    node = single_node(spawner, broker, threads=1)  # one slot: its tasks run inline
    count = 8 * RESULTS_HELD_BACK
    runs = [Run(f"q{i}", "add", dumps_payload([i, 1])) for i in range(count)]
    broker.send_raw(node, b"", *encode_batch(runs))
    answers = [broker.result(f"q{i}", timeout=10)[1] for i in range(count)]
    assert [loads_payload(a.result) for a in answers] == [i + 1 for i in range(count)]
    shared = [r.shared for r in broker.requests if isinstance(r.message, Result)]
    assert len(shared) == count and max(shared) <= RESULTS_HELD_BACK
    assert max(shared) > 1  # they did leave together


def test_a_node_reads_packed_runs_and_packs_its_results_for_a_broker_that_reads_them(
    spawner: Spawner, broker: FakeBroker
) -> None:
    """protocol.md 2.5: the node asks for packed RUNs in REGISTER, and sends packed RESULTs
    once REGISTERED says the broker reads them."""
    start_node(spawner, broker, "--concurrency", "1", threads=1)
    node, register = broker.register(packed=True)
    assert register.packed
    count = 4 * RESULTS_HELD_BACK
    runs = [Run(f"k{i}", "add", dumps_payload([i, 2])) for i in range(count)]
    broker.send_raw(node, b"", *encode_packed(runs))
    answers = [broker.result(f"k{i}", timeout=10)[1] for i in range(count)]
    assert [loads_payload(a.result) for a in answers] == [i + 2 for i in range(count)]
    results = [r for r in broker.requests if isinstance(r.message, Result)]
    assert all(r.packed == (r.shared > 1) for r in results)
    assert any(r.packed for r in results)


def test_a_stopping_node_stays_until_the_broker_forgot_it(
    spawner: Spawner, broker: FakeBroker
) -> None:
    """After DEREGISTER a RUN may still be on its way (sent before the broker read it): an
    idle node runs it, and ends once the broker answers its HEARTBEAT with DISCONNECT."""
    node = single_node(spawner, broker, threads=1)
    proc = broker.alive[0]
    assert broker.call(node, "add", 1, 1).result == b"2"  # registered, and idle
    proc.signal(signal.SIGTERM)
    deregistered = broker.take(Deregister, timeout=2)
    broker.run(node, "crossed", "echo", "ran")  # sent before the broker saw the DEREGISTER
    assert broker.result("crossed")[1].result == b'"ran"'
    probe = broker.take(Heartbeat, timeout=2, where=lambda r: r.at > deregistered.at)
    assert proc.alive(), "the node ended before the broker had forgotten it"
    broker.alive.clear()  # it is meant to exit now
    broker.send(node, Disconnect("not registered: send REGISTER"))
    broker.wait(lambda: not proc.alive(), 2, "the node to exit")
    assert proc.popen.returncode == 0
    assert time.monotonic() - probe.at < 1.5
