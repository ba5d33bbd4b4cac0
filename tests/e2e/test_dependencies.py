"""Tasks that wait for other tasks (`after=`, EXECUTE depends_on, protocol.md 5.7) and take
their results (futures as arguments, EXECUTE inputs, 5.8), with real processes: order, data,
failure and cancellation passed on, and chains that survive a broker killed in their
middle."""

from __future__ import annotations

import signal

import pytest

from broker import protocol as p
from client import BrokerError, Client, NotFound, TaskFailed
from tests.e2e.conftest import Cluster, free_port
from tests.support import wait_until


def test_a_task_starts_only_after_the_tasks_it_names(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        slow = client.submit("sleep", 0.5)
        fast = client.submit("add", 1, 2)
        last = client.submit("multiply", 6, 7, after=[slow, fast.task_id])
        assert last.result(30) == 42
        assert slow.done() and fast.done()
        # The node answered the dependency before the dependent started: order by count.
        assert client.status()["counters"]["completed"] == 3


def test_a_failure_or_a_cancel_is_passed_on_along_a_chain(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        broken = client.submit("divide", 1, 0)
        second = client.submit("add", 1, 1, after=[broken])
        third = client.submit("add", 2, 2, after=[second])
        with pytest.raises(TaskFailed) as failed:
            third.result(30)
        assert (failed.value.exit_code, failed.value.error_type) == (66, "DependencyFailed")
        assert second.task_id in failed.value.message
        long = client.submit("sleep", 30)
        waiting = client.submit("add", 3, 3, after=[long])
        wait_until(lambda: client.status()["waiting_dependencies"] == 1, 10, what="waiting")
        assert client.cancel(long.task_id) == "running"
        with pytest.raises(TaskFailed) as cancelled:
            waiting.result(10)
        assert cancelled.value.exit_code == p.EXIT_CANCELLED
        with pytest.raises(BrokerError) as unknown:
            client.execute("add", 1, 2, after=["no-such-task"])
        assert unknown.value.code == p.ERR_UNKNOWN_DEPENDENCY


def test_a_chain_completes_across_a_broker_killed_in_its_middle(cluster: Cluster) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    broker = cluster.start_broker(bind=url)
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(url, resend_interval=0.5) as client:
        first = client.submit("sleep", 0.2)
        second = client.submit("sleep", 1.0, after=[first])
        third = client.submit("multiply", 3, 3, after=[second])
        # Killed while the second runs and the third waits; the chain was accepted (and
        # stored, within 5 ms) as the first began.
        wait_until(
            lambda: first.done() and client.status()["running"] == 1,
            10,
            what="the second task running",
        )
        assert client.status()["waiting_dependencies"] == 1
        broker.signal(signal.SIGKILL)
        broker.wait(5)
        cluster.start_broker(bind=url)  # the same store: the chain comes back
        assert third.result(60) == 9
        assert (first.result(1), second.result(1)) == (0.2, 1.0)
    # The second and the third; the first too when its answer came in the last 5 ms.
    assert cluster.status()["counters"]["restored"] in (2, 3)


def test_zsubmit_after_waits_for_a_task_and_says_why_it_did_not_run(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    first = cluster.zsubmit("--detach", "sleep", "0.3")
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    done = cluster.zsubmit("--after", task_id, "multiply", "6", "7")
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
    broken = cluster.zsubmit("--detach", "divide", "1", "0").stdout.strip()
    failed = cluster.zsubmit("--after", broken, "--after", task_id, "add", "1", "1")
    assert failed.returncode == 1
    assert "exit 66, DependencyFailed" in failed.stderr and broken in failed.stderr


def test_a_future_passed_as_an_argument_is_replaced_by_its_result(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math", concurrency=2)
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0.0", "node0.1", "node1")
    with Client(cluster.url) as client:
        a = client.submit("add", 1, 2)
        b = client.submit("multiply", a, 10)
        assert b.result(30) == 30
        # Anywhere in the arguments, nested, with big integers, and with `after` besides.
        big = client.submit("sum_squares", 1, 10_000_000)
        slow = client.submit("sleep", 0.3)
        nested = client.submit("echo", [a, {"b": b, "a": (a,)}, 4], after=[slow])
        assert nested.result(30) == [3, {"b": 30, "a": [3]}, 4] and slow.done()
        both = client.submit("multiply", big, a)
        assert both.result(30) == 333333383333335000000 * 3
        with pytest.raises(TaskFailed) as failed:
            client.submit("add", client.submit("divide", 1, 0), 1).result(30)
        assert failed.value.exit_code == p.EXIT_DEPENDENCY_FAILED
        assert "(divide) failed (exit 1: ZeroDivisionError" in failed.value.message


def test_a_chain_passing_results_completes_across_a_broker_killed_in_its_middle(
    cluster: Cluster,
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    # Answers are kept 0.1 s only: the results the chain still needs are kept regardless,
    # in memory and in the store.
    broker = cluster.start_broker("--keep-results", "0.1", bind=url)
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(url, resend_interval=0.5) as client:
        first = client.submit("add", 0.5, 0.5)
        second = client.submit("sleep", first)  # sleeps 1 s, returns 1.0
        third = client.submit("multiply", second, 3)
        wait_until(
            lambda: first.done() and client.status()["running"] == 1,
            10,
            what="the second task running",
        )
        assert client.status()["waiting_dependencies"] == 1
        wait_until(
            lambda: forgotten(client, first.task_id),
            10,
            what="the first answer past --keep-results",
        )
        broker.signal(signal.SIGKILL)
        broker.wait(5)
        cluster.start_broker("--keep-results", "0.1", bind=url)  # the same store
        assert third.result(60) == 3.0
        assert first.result(1) == 1.0


def forgotten(client: Client, task_id: str) -> bool:
    """Whether the broker no longer keeps the answer of `task_id` for clients."""
    try:
        client.result(task_id, timeout=5)
    except NotFound:
        return True
    return False
