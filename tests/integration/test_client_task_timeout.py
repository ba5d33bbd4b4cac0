"""Execution timeouts from the clients (EXECUTE `timeout_ms`) and how failures the broker
reports (timeout, crash, lost node, expiry) read, in Python and in `zsubmit`."""

from __future__ import annotations

import math
import pickle
import subprocess
from collections.abc import Iterator

import orjson
import pytest

from broker.protocol import (
    EXIT_EXPIRED,
    EXIT_NODE_LOST,
    EXIT_TIMEOUT,
    EXIT_WORKER_CRASHED,
    ErrorInfo,
    Execute,
)
from client import Client, TaskFailed
from tests.fakes import (
    FakeBroker,
    Received,
    Reply,
    completed,
    fake_brokers,
)
from tests.support import BIN

FAILURES = {
    EXIT_TIMEOUT: ErrorInfo("Timeout", "stopped after running 1.5 s"),
    EXIT_WORKER_CRASHED: ErrorInfo("WorkerCrashed", "the slot process died (signal 9)"),
    EXIT_NODE_LOST: ErrorInfo("NodeLost", "node lost on attempt 4 of 4"),
    EXIT_EXPIRED: ErrorInfo("Expired", "not started within 0.5 s"),
}


def answer(received: Received) -> list[Reply]:
    """`fail` with an exit code as its argument fails like that; anything else returns 7."""
    execute = received.message
    assert isinstance(execute, Execute)
    if execute.spec.function == "fail":
        code = orjson.loads(execute.spec.args)[0]
        return [completed(received, exit_code=code, error=FAILURES[code])]
    return [completed(received, 7)]


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with fake_brokers() as start:
        yield start(answer)


def sent_timeouts(broker: FakeBroker) -> list[float | None]:
    return [execute.spec.task_timeout for _, execute in broker.executes()]


# ------------------------------------------------------------------------------ Python API


def test_task_timeout_goes_on_the_wire(broker: FakeBroker) -> None:
    with Client(broker.url) as client:
        assert client.execute("f", task_timeout=2.5) == 7
        assert client.execute_raw("f", [], task_timeout=0.001).exit_code == 0
        assert client.execute("f") == 7
        assert client.map("f", [(1,), (2,)], task_timeout=60) == [7, 7]
        assert list(client.imap("f", [(1,)], task_timeout=7 * 86_400)) == [7]
    # The fake broker decoded real frames: timeout_ms was 2500, 1, absent, 60000, 604800000.
    assert sent_timeouts(broker) == [2.5, 0.001, None, 60, 60, 604_800]


def test_the_clients_task_timeout_is_the_default(broker: FakeBroker) -> None:
    with Client(broker.url, task_timeout=3) as client:
        assert client.defaults.task_timeout == 3
        client.execute("f")
        client.execute("f", task_timeout=1)
        client.map("f", [()])
    assert sent_timeouts(broker) == [3, 1, 3]


@pytest.mark.parametrize("bad", [0, -1, 0.0004, 604_800.5, math.nan, math.inf, True, "5"])
def test_a_bad_task_timeout_is_a_value_error(broker: FakeBroker, bad: object) -> None:
    with pytest.raises(ValueError, match=r"task_timeout must be from 0\.001 to 604800 seconds"):
        Client(broker.url, task_timeout=bad)  # type: ignore[arg-type]
    with Client(broker.url) as client:
        for call in (
            lambda: client.execute("f", task_timeout=bad),  # type: ignore[arg-type]
            lambda: client.execute_raw("f", [], task_timeout=bad),  # type: ignore[arg-type]
            lambda: client.map("f", [()], task_timeout=bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(ValueError, match="7 days"):
                call()
    assert broker.executes() == []


def test_a_timed_out_task_raises_task_failed_124(broker: FakeBroker) -> None:
    with Client(broker.url) as client:
        with pytest.raises(TaskFailed) as info:
            client.execute("fail", EXIT_TIMEOUT, task_timeout=1.5)
        failures = client.map("fail", [(EXIT_TIMEOUT,)], return_exceptions=True)
    assert (info.value.exit_code, info.value.error_type, info.value.task_timeout) == (
        124,
        "Timeout",
        1.5,
    )
    assert str(info.value) == (
        "fail timed out after 1.5 s (exit 124, Timeout): stopped after running 1.5 s"
    )
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    [failure] = failures
    assert isinstance(failure, TaskFailed)
    assert str(failure).startswith("fail timed out after the broker's task timeout (exit 124")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (EXIT_WORKER_CRASHED, "fail killed the node process running it (exit 70, WorkerCrashed)"),
        (EXIT_NODE_LOST, "fail failed: its node died or stopped answering (exit 69, NodeLost)"),
        (EXIT_EXPIRED, "fail expired in the queue before a node was free to start it (exit 125"),
    ],
)
def test_failures_the_broker_reports_say_what_happened(
    broker: FakeBroker, code: int, words: str
) -> None:
    with Client(broker.url) as client, pytest.raises(TaskFailed) as info:
        client.execute("fail", code)
    assert str(info.value).startswith(words)
    assert str(info.value).endswith(FAILURES[code].message)


# ------------------------------------------------------------------------------ zsubmit


def zsubmit(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "zsubmit"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_zsubmit_task_timeout_goes_on_the_wire(broker: FakeBroker) -> None:
    done = zsubmit("--broker", broker.url, "--task-timeout", "2.5", "f")
    assert (done.returncode, done.stdout, done.stderr) == (0, "7\n", "")
    done = zsubmit("--broker", broker.url, "f")
    assert done.returncode == 0, done.stderr
    assert sent_timeouts(broker) == [2.5, None]


def test_zsubmit_timed_out_task(broker: FakeBroker) -> None:
    done = zsubmit("--broker", broker.url, "--task-timeout", "1.5", "fail", str(EXIT_TIMEOUT))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "error: fail timed out after 1.5 s (exit 124, Timeout): stopped after running 1.5 s; "
        "give it longer with --task-timeout S\n"
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (EXIT_WORKER_CRASHED, "see that node's log"),
        (EXIT_NODE_LOST, "check the nodes with `zbroker status`, or allow more --retries N"),
        (EXIT_EXPIRED, "let it wait longer with --queue-timeout S"),
    ],
)
def test_zsubmit_failures_say_what_to_do(broker: FakeBroker, code: int, advice: str) -> None:
    done = zsubmit("--broker", broker.url, "fail", str(code))
    assert done.returncode == 1
    assert done.stderr.startswith("error: fail ")
    assert f"(exit {code}, {FAILURES[code].type}): {FAILURES[code].message}" in done.stderr
    assert done.stderr.rstrip().endswith(advice)


def test_zsubmit_warns_when_it_would_stop_waiting_first(broker: FakeBroker) -> None:
    done = zsubmit("--broker", broker.url, "--timeout", "5", "--task-timeout", "10", "f")
    assert done.returncode == 0 and done.stdout == "7\n"
    assert done.stderr.startswith("warning: --timeout 5 s is not longer than --task-timeout 10 s")


@pytest.mark.parametrize("bad", ["0", "-1", "604801", "soon"])
def test_zsubmit_refuses_a_bad_task_timeout(broker: FakeBroker, bad: str) -> None:
    done = zsubmit("--broker", broker.url, "--task-timeout", bad, "f")
    assert done.returncode == 2
    assert "--task-timeout" in done.stderr
    assert broker.executes() == []


def test_zsubmit_help_tells_the_two_timeouts_apart() -> None:
    done = zsubmit("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.replace("│", " ").split())  # unboxed, unwrapped
    assert "--task-timeout limits how long the function may run on its node" in text
    assert "--timeout limits how long zsubmit waits for the answer" in text
    assert "Not how long zsubmit waits: that is --timeout." in text
    assert "Not a limit on the function: that is --task-timeout." in text
