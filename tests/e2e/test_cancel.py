"""Cancellation, results by id, task ids that mean one request, and retries as Ray's
defaults (protocol.md 3.17-3.20, 5.1, 5.6, 6), with real processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from broker import protocol as p
from client import BrokerError, Client, NotFound, TaskFailed
from tests.e2e.conftest import Cluster
from tests.e2e.test_prefetch import in_thread
from tests.support import wait_until


def execute_in_thread(
    url: str, out: dict[str, Any], key: str, *call: Any, **options: Any
) -> threading.Thread:
    """`Client.execute(*call, **options)` on a client of its own in a thread (a Client is
    not thread-safe); its result or exception goes to `out[key]` / `out[key + "_error"]`."""

    def execute(*args: Any) -> Any:
        with Client(url, timeout=30) as client:
            return client.execute(*args, **options)

    return in_thread(out, key, execute, *call)


def test_a_queued_task_cancelled_never_runs_and_its_waiter_gets_130(cluster: Cluster) -> None:
    cluster.start_broker()
    node = cluster.start_node("--prefetch", "0", functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}
    with Client(cluster.url, timeout=30) as client:
        busy = execute_in_thread(cluster.url, out, "busy", "sleep", 1.5)
        wait_until(lambda: cluster.status()["running"] == 1, 10, alive=[node], what="busy")
        waiting = execute_in_thread(cluster.url, out, "queued", "add", 1, 2, task_id="queued-1")
        wait_until(lambda: cluster.status()["queued"] == 1, 10, alive=[node], what="queued")
        assert client.cancel("queued-1") == "queued"
        waiting.join(5)
        error = out.get("queued_error")
        assert isinstance(error, TaskFailed) and error.exit_code == p.EXIT_CANCELLED, out
        assert "cancelled" in str(error)
        busy.join(10)
        assert out.get("busy") == 1.5
        assert client.cancel("queued-1") == "finished"
        with pytest.raises(TaskFailed) as fetched:
            client.result("queued-1")
        assert fetched.value.exit_code == p.EXIT_CANCELLED
        with pytest.raises(NotFound):
            client.cancel("never-submitted")
    status = cluster.status()
    assert status["nodes"][0]["completed"] == 1  # only the busy task ran
    assert status["counters"]["cancelled"] == 1 and status["dead_letters"] == 0


def test_a_running_task_cancelled_is_stopped_on_its_node_within_a_second(
    cluster: Cluster,
) -> None:
    cluster.start_broker()
    node = cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}
    with Client(cluster.url, timeout=30) as client:
        running = execute_in_thread(cluster.url, out, "long", "sleep", 30, task_id="long-1")
        wait_until(lambda: cluster.status()["running"] == 1, 10, alive=[node], what="running")
        asked = time.monotonic()
        assert client.cancel("long-1") == "running"
        running.join(5)
        assert time.monotonic() - asked < 1.0
        error = out.get("long_error")
        assert isinstance(error, TaskFailed) and error.exit_code == p.EXIT_CANCELLED, out
        # The node stops the function and its slot takes the next task.
        assert client.execute("add", 2, 3, timeout=15) == 5


def test_results_by_id_wait_for_pending_tasks_and_say_not_found(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=30) as client:
        assert client.execute("multiply", 6, 7, task_id="answer") == 42
        assert client.result("answer") == 42
        out: dict[str, Any] = {}
        slow = execute_in_thread(cluster.url, out, "slow", "sleep", 0.5, task_id="slow-1")
        with Client(cluster.url, timeout=30) as other:
            wait_until(lambda: other.status()["running"] == 1, 10, what="slow-1 running")
            assert other.result("slow-1") == 0.5
        slow.join(5)
        with pytest.raises(NotFound) as missing:
            client.result("no-such-task")
        assert "no such task" in str(missing.value)


def test_client_ids_give_each_client_its_own_task_ids(cluster: Cluster) -> None:
    """Without CURVE, a client id is the scope of task ids (protocol.md 5.11)."""
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    alice = Client(cluster.url, timeout=30, client_id="alice")
    bob = Client(cluster.url, timeout=30, client_id="bob")
    shared = Client(cluster.url, timeout=30)
    with alice, bob, shared:
        assert alice.execute("multiply", 2, 3, task_id="job") == 6
        assert bob.execute("multiply", 4, 5, task_id="job") == 20  # his own, no conflict
        assert shared.execute("multiply", 6, 7, task_id="job") == 42
        assert (alice.result("job"), bob.result("job"), shared.result("job")) == (6, 20, 42)
        assert alice.execute("add", 1, 1, task_id="alice-only") == 2
        with pytest.raises(NotFound):
            bob.result("alice-only")
        with pytest.raises(NotFound):
            shared.cancel("alice-only")
    # zsubmit: ZTB_CLIENT_ID or --client-id, for runs, results and cancels.
    fetched = cluster.zsubmit("result", "job", "--client-id", "alice")
    assert fetched.returncode == 0 and fetched.stdout.strip() == "6", fetched.stderr
    missing = cluster.zsubmit("result", "job", "--client-id", "carol")
    assert missing.returncode != 0 and "job" in missing.stderr


def test_a_known_task_id_with_other_arguments_is_refused(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=30) as client:
        assert client.execute("multiply", 2, 2, task_id="job-42") == 4
        with pytest.raises(BrokerError) as refused:
            client.execute("multiply", 7, 7, task_id="job-42")
        assert refused.value.code == p.ERR_CONFLICT and "job-42" in str(refused.value)
        assert client.execute("multiply", 2, 2, task_id="job-42") == 4  # the same: answered


def test_an_exception_is_not_retried_unless_asked(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=30) as client:
        with pytest.raises(TaskFailed) as once:
            client.execute("divide", 1, 0)
        assert (once.value.exit_code, once.value.attempts) == (1, 1)
        with pytest.raises(TaskFailed) as again:
            client.execute("divide", 1, 0, retries=2, retry_on="exception")
        assert (again.value.exit_code, again.value.attempts) == (1, 3)


def test_results_by_id_read_dead_letters_and_wait_for_a_replay(cluster: Cluster) -> None:
    cluster.start_broker("--keep-results", "0")  # no kept answers: the dead letter answers
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=30) as client:
        with pytest.raises(TaskFailed):
            client.execute("fail", "broken", task_id="dl-1")
        with pytest.raises(TaskFailed) as kept:
            client.result("dl-1")
        assert (kept.value.exit_code, kept.value.error_type) == (1, "RuntimeError")
        assert client.replay("dl-1") == {"replayed": ["dl-1"], "missing": []}
        with pytest.raises(TaskFailed) as again:
            client.result("dl-1")  # the replayed run's answer (or, once buried, its letter)
        assert again.value.message == "broken"
        wait_until(lambda: client.status()["dead_letters"] == 1, 10, what="buried again")
    assert cluster.status()["nodes"][0]["completed"] == 2


def test_an_exception_its_function_set_declares_retryable_is_retried(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="tests.retrying_tasks")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=30, retries=2) as client:
        with pytest.raises(TaskFailed) as declared:
            client.execute("fetch", "refused")
        assert (declared.value.error_type, declared.value.attempts) == ("ConnectionRefusedError", 3)
        with pytest.raises(TaskFailed) as other:
            client.execute("fetch", "bad")
        assert (other.value.error_type, other.value.attempts) == ("ValueError", 1)
