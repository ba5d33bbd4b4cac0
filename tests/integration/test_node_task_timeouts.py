"""Task timeouts and crash isolation of a real `znode` against the fake broker.

A task past its task timeout is answered with exit 124 and its node process is replaced at
once; a function that kills its process is survived the same way; the new process's first
REGISTER names the process it replaces and how that one ended.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.protocol import (
    EXIT_TIMEOUT,
    Deregister,
    Disconnect,
    ErrorInfo,
    Register,
    Registered,
    Replaces,
    Result,
)
from client.cluster import Process
from tests.fakes import INTERVAL, LIVENESS, FakeBroker, Received
from tests.integration.test_node_agent import parent_of, start_node
from tests.support import Spawner, wait_until


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as fake:
        yield fake


def supervised(
    spawner: Spawner, broker: FakeBroker, threads: int = 1
) -> tuple[Process, bytes, Register]:
    """`znode --concurrency 1`, registered: the supervisor, its child's identity and REGISTER."""
    proc = start_node(spawner, broker, "--concurrency", "1", threads=threads)
    identity, register = broker.register()
    return proc, identity, register


def take_register(broker: FakeBroker, timeout: float = 5.0) -> tuple[Received, Register]:
    got = broker.take(Register, timeout)
    assert isinstance(got.message, Register)
    return got, got.message


def answer(broker: FakeBroker, got: Received) -> bytes:
    broker.send(got.identity, Registered("node-new", INTERVAL, LIVENESS))
    broker.keepalive.add(got.identity)
    return got.identity


def replacement(broker: FakeBroker, old: bytes, timeout: float = 5.0) -> tuple[Received, Register]:
    """The REGISTER of the process started in place of the one at identity `old`."""
    broker.keepalive.discard(old)
    got, register = take_register(broker, timeout)
    assert got.identity != old
    answer(broker, got)
    return got, register


def take_result(broker: FakeBroker, task_id: str, timeout: float = 5.0) -> tuple[float, Result]:
    """When the RESULT for `task_id` arrived, and the RESULT."""
    got = broker.take(Result, timeout, lambda r: getattr(r.message, "task_id", "") == task_id)
    assert isinstance(got.message, Result)
    return got.at, got.message


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaps counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) == pid and not gone(int(entry.name)):
                    found.add(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # it ended while we looked
    return found


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_task_past_its_task_timeout_is_answered_124_and_its_process_replaced(
    spawner: Spawner, broker: FakeBroker, threads: int
) -> None:
    proc, node, first = supervised(spawner, broker, threads)
    sent = time.monotonic()
    broker.run(node, "slow", "sleep", 10, task_timeout=0.3, attempt=2)
    answered, result = take_result(broker, "slow", timeout=2)
    assert result.exit_code == EXIT_TIMEOUT
    assert result.attempt == 2
    assert result.error == ErrorInfo(
        "Timeout",
        "sleep() exceeded its timeout of 0.3 s (attempt 2); "
        "the node process was restarted to stop it",
    )
    assert 0.3 <= answered - sent < 0.8, f"answered after {answered - sent:.3f} s"
    # DEREGISTER first, so that the freed slot brings no new RUN to a process about to end
    # (the broker keeps the function offered while the successor registers).
    assert broker.count(Deregister) == 1
    assert broker.take(Deregister, timeout=0).at <= answered

    got, second = replacement(broker, node)
    print(f"RUN -> RESULT 124: {answered - sent:.3f} s; RUN -> new REGISTER: {got.at - sent:.3f} s")
    assert second.replaces == Replaces(
        first.pid, "stopped after task slow exceeded its 0.3 s timeout"
    )
    assert (second.name, second.capacity) == ("n1", threads)
    assert parent_of(second.pid) == proc.pid and gone(first.pid)
    assert got.at - sent < 0.3 + 1.5, "the supervisor did not restart the process at once"
    assert broker.call(got.identity, "multiply", 6, 7).result == b"42"


def test_other_tasks_finish_before_a_process_with_an_overdue_task_restarts(
    spawner: Spawner, broker: FakeBroker
) -> None:
    _, node, first = supervised(spawner, broker, threads=3)
    broker.run(node, "other", "sleep", 0.6)  # no timeout; still running at the deadline
    broker.run(node, "slow", "sleep", 10, task_timeout=0.3)
    answered, result = take_result(broker, "slow", timeout=2)
    assert result.exit_code == EXIT_TIMEOUT
    # It took no new work before the RESULT freed the slot: the others finish first.
    assert broker.take(Deregister, timeout=0).at <= answered
    broker.run(node, "crossed", "echo", "late")  # crossed the DEREGISTER: still run
    other_at, other = take_result(broker, "other", timeout=3)
    assert other.result == b"0.6"
    assert take_result(broker, "crossed")[1].result == b'"late"'
    got, second = replacement(broker, node)
    assert got.at >= other_at  # the process waited for its other task
    assert second.replaces is not None and second.replaces.pid == first.pid


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_tasks_within_or_without_a_task_timeout_leave_the_process_alone(
    spawner: Spawner, broker: FakeBroker, threads: int
) -> None:
    _, node, first = supervised(spawner, broker, threads)
    broker.run(node, "quick", "sleep", 0.2, task_timeout=1.0)
    broker.run(node, "untimed", "sleep", 0.4)
    assert take_result(broker, "quick")[1].exit_code == 0
    assert take_result(broker, "untimed")[1].exit_code == 0
    # Well past the first task's deadline: the same process still serves.
    pid = broker.call(node, "pid")
    assert (pid.exit_code, pid.result) == (0, str(first.pid).encode())
    assert broker.count(Register) == broker.count(Deregister) == 0


def test_a_crashed_process_is_replaced_and_only_its_first_register_says_so(
    spawner: Spawner, broker: FakeBroker
) -> None:
    _, node, first = supervised(spawner, broker)
    broker.run(node, "boom", "crash", 3)
    broker.keepalive.discard(node)
    # Unanswered, the REGISTER is sent again (fresh socket), still naming the crashed one.
    unanswered, second = take_register(broker)
    again, second_again = take_register(broker, timeout=3)
    assert again.identity != unanswered.identity
    assert second.replaces == second_again.replaces == Replaces(first.pid, "exited with status 3")
    assert second.pid == second_again.pid != first.pid
    identity = answer(broker, again)
    assert broker.count(Result) == 0  # the crash answered nothing: the broker fails "boom"
    # Registering again later (the broker forgot it) is not a restart.
    broker.send(identity, Disconnect("forgot you"))
    broker.keepalive.discard(identity)
    _, third = take_register(broker)
    assert third.pid == second.pid and third.replaces is None


def test_a_segfault_is_survived_and_named(spawner: Spawner, broker: FakeBroker) -> None:
    proc, node, first = supervised(spawner, broker, threads=2)
    broker.run(node, "segv", "segfault")
    got, second = replacement(broker, node)
    assert second.replaces == Replaces(first.pid, "killed by signal 11 (SIGSEGV)")
    assert parent_of(second.pid) == proc.pid
    assert broker.call(got.identity, "echo", "after").result == b'"after"'


def test_only_crashes_are_restarted_with_backoff(spawner: Spawner, broker: FakeBroker) -> None:
    proc, node, _ = supervised(spawner, broker)
    for code in (3, 4):
        broker.run(node, "boom", "crash", code)
        node = replacement(broker, node)[0].identity
    broker.run(node, "slow", "sleep", 10, task_timeout=0.2)
    replacement(broker, node)
    log = proc.log()
    # A young process that keeps crashing is restarted ever more slowly; a restart after a
    # timeout never waits, even right after crashes.
    assert "exited with status 3; restarting it in 0.0 s" in log
    assert "exited with status 4; restarting it in 0.1 s" in log
    assert "stopped after task slow exceeded its 0.2 s timeout; restarting it in 0.0 s" in log


def test_a_spare_process_stands_by_and_takes_over_at_once(
    spawner: Spawner, broker: FakeBroker
) -> None:
    proc, node, first = supervised(spawner, broker)
    spare = wait_until(lambda: children_of(proc.pid) - {first.pid}, 5, what="the spare process")
    assert len(spare) == 1
    broker.run(node, "boom", "crash", 3)
    _, second = replacement(broker, node)
    assert {second.pid} == spare  # the spare, started before the crash, took over
    # and another spare stands by for the next one
    wait_until(lambda: children_of(proc.pid) - {second.pid}, 5, what="a new spare process")


def test_killing_the_supervisor_takes_its_processes_down(
    spawner: Spawner, broker: FakeBroker
) -> None:
    proc = start_node(spawner, broker, "--concurrency", "2", threads=1)
    broker.register(name="n1.0")
    broker.register(name="n1.1")

    def all_three() -> set[int] | None:
        found = children_of(proc.pid)
        return found if len(found) == 3 else None  # two node processes and the spare

    processes = wait_until(all_three, 5, what="three processes")
    broker.alive.clear()
    proc.signal(signal.SIGKILL)
    wait_until(lambda: all(gone(pid) for pid in processes), 5, what="the children to die")
