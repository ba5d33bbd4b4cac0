"""STOP (protocol.md 3.20) at a real `znode` against the fake broker: a cancelled task is
answered exit 130 at once, held or running; a running one is stopped by replacing its
process, whose successor's REGISTER names it; a STOP for a task the node does not have
changes nothing."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.protocol import (
    EXIT_CANCELLED,
    Claim,
    Deregister,
    ErrorInfo,
    Heartbeat,
    Register,
    Replaces,
    Result,
    Stop,
)
from node.agent import NodeAgent
from node.config import NodeConfig
from tests.fakes import FakeBroker
from tests.integration.test_node_agent import parent_of
from tests.integration.test_node_task_timeouts import gone, replacement, supervised, take_result
from tests.support import Spawner


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as fake:
        yield fake


def running(broker: FakeBroker, since: float) -> None:
    """Wait until the node has surely started what it was sent at `since`: it heartbeats
    a while after (from the watchdog, for a function run inline)."""
    broker.take(Heartbeat, 2, lambda r: r.at > since + 0.3)


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_a_running_task_is_answered_130_within_a_second_and_its_process_replaced(
    spawner: Spawner, broker: FakeBroker, threads: int
) -> None:
    proc, node, first = supervised(spawner, broker, threads)
    assert first.stop, "the node does not say it answers STOP"
    sent = time.monotonic()
    broker.run(node, "long", "sleep", 30, attempt=2)
    running(broker, sent)
    stopped = time.monotonic()
    broker.send(node, Stop(("long",)))
    answered, result = take_result(broker, "long", timeout=2)
    assert answered - stopped < 1.0, f"answered {answered - stopped:.3f} s after the STOP"
    assert result == Result(
        "long",
        EXIT_CANCELLED,
        b"null",
        ErrorInfo(
            "Cancelled",
            "sleep() was cancelled by a client (attempt 2); "
            "the node process was restarted to stop it",
        ),
        attempt=2,
    )
    # DEREGISTER first, so that the freed slot brings no new RUN to a process about to end.
    assert broker.take(Deregister, timeout=0).at <= answered
    got, second = replacement(broker, node)
    print(
        f"STOP -> RESULT 130: {answered - stopped:.3f} s; -> new REGISTER {got.at - stopped:.3f} s"
    )
    assert second.replaces == Replaces(first.pid, "stopped after task long was cancelled")
    assert parent_of(second.pid) == proc.pid and gone(first.pid)
    # The answer was handed over: the successor claims it and sends it again, as this
    # broker never confirmed it stored (protocol.md 7.4).
    assert second.attempts == (Claim("long", 2, done=True),)
    assert take_result(broker, "long", timeout=2)[1] == result
    assert broker.call(got.identity, "multiply", 6, 7).result == b"42"
    assert broker.count(Result) == 0  # nothing more about "long"


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_a_held_task_is_answered_130_at_once_and_the_running_ones_go_on(
    spawner: Spawner, broker: FakeBroker, threads: int
) -> None:
    _, node, first = supervised(spawner, broker, threads)
    sent = time.monotonic()
    busy = [f"long{i}" for i in range(threads)]  # every slot runs one of these
    for task_id in busy:
        broker.run(node, task_id, "sleep", 1.0)
    broker.run(node, "held", "echo", "never", attempt=3)
    running(broker, sent)
    stopped = time.monotonic()
    broker.send(node, Stop(("held",)))
    answered, result = take_result(broker, "held", timeout=2)
    assert answered - stopped < 0.5, f"answered {answered - stopped:.3f} s after the STOP"
    assert result == Result(
        "held",
        EXIT_CANCELLED,
        b"null",
        ErrorInfo("Cancelled", "echo() was cancelled before it started (attempt 3)"),
        attempt=3,
    )
    for task_id in busy:
        assert take_result(broker, task_id, timeout=3)[1].result == b"1.0"
    # The held task never ran, and the process goes on serving as it was.
    pid = broker.call(node, "pid")
    assert (pid.exit_code, pid.result) == (0, str(first.pid).encode())
    assert broker.count(Result) == broker.count(Deregister) == broker.count(Register) == 0


def test_a_stop_for_a_task_the_node_does_not_have_changes_nothing(
    spawner: Spawner, broker: FakeBroker
) -> None:
    _, node, first = supervised(spawner, broker, threads=1)
    assert broker.call(node, "add", 1, 1).result == b"2"
    broker.send(node, Stop(("unknown", "t-answered-already")))
    pid = broker.call(node, "pid")
    assert (pid.exit_code, pid.result) == (0, str(first.pid).encode())
    assert broker.count(Result) == broker.count(Deregister) == broker.count(Register) == 0


def test_a_stop_signal_taken_by_another_thread_deregisters_while_the_task_runs(
    broker: FakeBroker,
) -> None:
    """The kernel may hand a signal sent to the process to any thread that does not block
    it; its Python handler then waits for the main thread, which is inside a function run
    inline. The watchdog still sees the stop (on the wake-up socket) and deregisters at
    once, and the task finishes. The agent runs on this test's main thread, where signal
    handlers live; a helper thread plays the broker and takes the signal itself."""
    config = NodeConfig(("math",), broker.url, concurrency=1, threads=1, name="n1")
    agent = NodeAgent(config)
    seen: dict[str, Any] = {}

    def drive() -> None:
        try:
            node, _ = broker.register()
            sent = time.monotonic()
            broker.run(node, "long", "sleep", 3.0)
            running(broker, sent)
            signalled = time.monotonic()
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this thread takes it
            seen["deregistered"] = broker.take(Deregister, timeout=2.5).at - signalled
            seen["result"] = broker.result("long")[1]
        except BaseException as exc:
            seen["error"] = exc
            agent.request_stop()
            agent.request_stop()  # a second stop: at once

    driver = threading.Thread(target=drive, name="fake-broker-driver")
    driver.start()
    try:
        code = agent.run()
    finally:
        driver.join(10)
    assert "error" not in seen, seen["error"]
    assert seen["deregistered"] < 0.5, f"DEREGISTER {seen['deregistered']:.3f} s after SIGTERM"
    assert seen["result"].exit_code == 0 and seen["result"].result == b"3.0"
    assert code == 0
