"""`Client.submit` futures against a real broker and real nodes: many futures on one
connection, from several threads, across a broker restart, cancelled, and closed while
pending."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import pytest

from client import BrokerUnreachable, Client, ClientError, TaskFailed
from client.futures import FIRST_COMPLETED
from tests.e2e.conftest import Cluster, free_port
from tests.support import wait_until


def test_a_thousand_futures_on_one_client(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        futures = [client.submit("multiply", n, 3) for n in range(1000)]
        finished = list(client.as_completed(futures, timeout=60))
        assert len(finished) == 1000 and set(finished) == set(futures)
        assert [future.result() for future in futures] == [3 * n for n in range(1000)]
    assert cluster.status()["counters"]["completed"] == 1000


def test_wait_for_the_first_and_a_failure(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions=["math", "util"], concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        slow = client.submit("sleep", 1.5)
        fast = client.submit("multiply", 6, 7)
        done, not_done = client.wait([slow, fast], timeout=20, return_when=FIRST_COMPLETED)
        assert done == {fast} and not_done == {slow}
        assert fast.result() == 42
        failing = client.submit("fail", "boom", retries=0, task_id="boom")
        with pytest.raises(TaskFailed) as info:
            failing.result(20)
        assert (info.value.task_id, info.value.exit_code) == ("boom", 1)
        assert (info.value.error_type, info.value.message) == ("RuntimeError", "boom")
        assert slow.result(20) == 1.5


def test_futures_from_four_threads_at_once(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="util", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    results: dict[int, list[Any]] = {}
    errors: list[BaseException] = []
    with Client(cluster.url) as client:
        start = threading.Barrier(4)

        def submit(worker: int) -> None:
            try:
                start.wait(10)
                futures = [client.submit("echo", [worker, n]) for n in range(250)]
                results[worker] = [future.result(60) for future in futures]
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        threads = [threading.Thread(target=submit, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
            assert not thread.is_alive(), "a submitting thread never finished"
    assert not errors, errors
    assert results == {w: [[w, n] for n in range(250)] for w in range(4)}


def test_pending_futures_survive_a_broker_restart(cluster: Cluster) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    broker = cluster.start_broker(bind=url)
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    with Client(url, resend_interval=0.5) as client:
        futures = [client.submit("echo", n) for n in range(2000)]

        def some_done_and_more_queued() -> bool:
            status = cluster.status()
            return bool(status["counters"].get("completed", 0) >= 200 and status["queued"] > 0)

        # Killed while the store holds queued tasks: they come back as restored ones.
        wait_until(some_done_and_more_queued, 30, what="some tasks done", alive=[broker])
        broker.signal(signal.SIGKILL)
        broker.wait(5)
        pending = sum(not future.done() for future in futures)
        cluster.start_broker(bind=url)  # the same store and address: resends find it
        assert [future.result(60) for future in futures] == list(range(2000))
    assert pending > 0, "every future was answered before the broker was killed"
    assert cluster.status()["counters"].get("restored", 0) > 0


def test_cancel_a_queued_task_and_close_with_futures_pending(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node("--prefetch", "0", functions="math", concurrency=1)  # none held
    cluster.wait_nodes("node0")
    client = Client(cluster.url)
    try:
        busy = client.submit("sleep", 8, task_id="busy")
        wait_until(lambda: cluster.status()["running"] == 1, 10, what="the one slot busy")
        queued = client.submit("multiply", 2, 2, task_id="queued")
        behind = client.submit("multiply", 3, 3, task_id="behind")
        wait_until(lambda: cluster.status()["queued"] == 2, 10, what="two tasks queued")
        assert queued.cancel() is True
        assert queued.cancelled()
        with pytest.raises(CancelledError):
            queued.result(0)
        with pytest.raises(TaskFailed) as info:  # FETCH: what the broker answered for it
            client.result("queued", timeout=10)
        assert (info.value.exit_code, info.value.error_type) == (130, "Cancelled")
        assert cluster.status()["queued"] == 1
        assert cluster.status()["counters"].get("cancelled") == 1
        assert not behind.done() and not busy.done()
        started = time.monotonic()
    finally:
        client.close()
    assert time.monotonic() - started < 5
    for future in (busy, behind):
        with pytest.raises(ClientError, match="closed before the broker answered"):
            future.result(0)
    with Client(cluster.url) as other:  # the closed client's tasks were left running
        assert other.cancel("busy") == "running"


def test_futures_fail_unreachable_without_a_broker_and_work_once_it_runs(
    cluster: Cluster,
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    with Client(url, connect_timeout=0.5) as client:
        early = client.submit("multiply", 2, 3)
        with pytest.raises(BrokerUnreachable):
            early.result(10)
        cluster.start_broker(bind=url)
        cluster.start_node(functions="math")
        cluster.wait_nodes("node0")
        assert client.submit("multiply", 4, 5).result(30) == 20
    # The early task was dropped with its socket: it never reached the broker.
    assert cluster.status()["counters"]["accepted"] == 1
