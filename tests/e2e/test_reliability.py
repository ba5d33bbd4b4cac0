"""Issue 3's promises, end to end with real processes: a killed or stopped broker loses no
accepted task, failures land in the dead-letter queue, timeouts stop functions, and a
function that kills its process costs only an attempt."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pytest

from client import Client, TaskFailed
from tests.e2e.conftest import Cluster, free_port
from tests.support import wait_until


def _run_map(url: str, args: list[tuple[Any, ...]], out: dict[str, Any]) -> None:
    try:
        with Client(url, timeout=60, resend_interval=0.5) as client:
            out["results"] = client.map("echo", args, window=500)
    except BaseException as exc:  # reported by the test thread
        out["error"] = exc


def _run_sequential(url: str, worker: int, stop: threading.Event, out: dict[str, Any]) -> None:
    """One REQ client: round trips until `stop`, each resent (same task id) after 0.5 s."""
    results: list[Any] = []
    out[f"req{worker}"] = results
    try:
        with Client(url, timeout=60, resend_interval=0.5) as client:
            while not stop.is_set():
                results.append(client.execute("echo", [worker, len(results)]))
    except BaseException as exc:
        out[f"error{worker}"] = exc


def _served(out: dict[str, Any]) -> int:
    return sum(len(out[f"req{w}"]) for w in range(3))


def test_broker_killed_with_queued_and_running_tasks_loses_none(cluster: Cluster) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker(bind=url)
    for _ in range(2):
        cluster.start_node(functions="util")
    cluster.wait_nodes("node0", "node1")
    args = [(i,) for i in range(3000)]
    out: dict[str, Any] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=_run_map, args=(url, args, out), daemon=True)]
    threads += [
        threading.Thread(target=_run_sequential, args=(url, w, stop, out), daemon=True)
        for w in range(3)
    ]
    for thread in threads:
        thread.start()
    assert cluster.broker is not None
    at_kill: dict[str, Any] = {}

    def some_done() -> bool:
        status = cluster.status()
        at_kill.update(status["counters"], queued=status["queued"], held=status["held"])
        return bool(status["counters"].get("completed", 0) >= 300)

    wait_until(some_done, 20, what="some tasks done", alive=[cluster.broker])
    cluster.broker.signal(signal.SIGKILL)
    cluster.broker.wait(5)
    before = _served(out)
    cluster.start_broker(bind=url)  # same store, same address: the clients' resends find it
    threads[0].join(60)  # the pipelined client
    wait_until(lambda: _served(out) > before + 30, 20, what="REQ clients served again")
    stop.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a client never finished"
    errors = {key: value for key, value in out.items() if key.startswith("error")}
    assert not errors, errors
    assert out["results"] == [i for (i,) in args]
    for worker in range(3):
        answers = out[f"req{worker}"]
        assert answers == [[worker, k] for k in range(len(answers))]
    restored = cluster.status()["counters"].get("restored", 0)
    assert restored > 0, (
        f"the store held no pending task; the broker just before its kill: {at_kill}"
    )


def test_sigterm_keeps_queued_tasks_for_the_next_broker(cluster: Cluster) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker(bind=url)
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}

    def submit() -> None:
        try:
            with Client(url, timeout=60, resend_interval=0.5) as client:
                out["results"] = client.map("sleep", [(0.2,)] * 6, window=10)
        except BaseException as exc:
            out["error"] = exc

    submitter = threading.Thread(target=submit, daemon=True)
    submitter.start()
    wait_until(lambda: _waiting(cluster.status()) >= 4, 10, what="tasks waiting behind one slot")
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGTERM)
    assert cluster.broker.wait(10) == 0
    log = cluster.broker.log()
    assert "stopping: no new tasks" in log, log
    cluster.start_broker(bind=url)
    assert cluster.status()["counters"].get("restored", 0) >= 4
    submitter.join(30)
    assert "error" not in out, out.get("error")
    assert out["results"] == [0.2] * 6


def test_dead_letters_survive_a_restart_and_can_be_replayed(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=10) as client, pytest.raises(TaskFailed):
        client.execute("fail", "boom", task_id="doomed", retries=0)
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGTERM)
    assert cluster.broker.wait(10) == 0
    cluster.start_broker()
    listing = cluster.zbroker("dlq", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert entry["task_id"] == "doomed" and entry["error"]["message"] == "boom"
    lines = (cluster.tmp / "broker.sqlite3.dlq.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["args"] == ["boom"]
    cluster.start_node(functions="util")
    cluster.wait_nodes("node1")
    replay = cluster.zbroker("dlq", "replay", "doomed")
    assert replay.returncode == 0, replay.stderr
    # it fails again, so it comes back with a fresh count of attempts
    wait_until(
        lambda: (
            cluster.status()["dead_letters"] == 1
            and cluster.status()["counters"].get("replayed") == 1
        ),
        10,
        what="the replayed task back in the dead-letter queue",
    )


def test_timeout_stops_a_long_task_and_the_node_serves_again(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(TaskFailed) as failure:
            client.execute("sleep", 10, task_timeout=1.0, retries=0)
        elapsed = time.monotonic() - started
        assert failure.value.exit_code == 124, failure.value
        assert elapsed <= 1.5, f"answered after {elapsed:.2f} s"
        assert client.execute("add", 2, 3) == 5  # the restarted process took the slot back
    assert cluster.node_names() == ["node0"]


@pytest.mark.parametrize(
    ("function", "args", "reason"), [("crash", (3,), "status 3"), ("segfault", (), "SIGSEGV")]
)
def test_function_that_kills_its_process_costs_an_attempt_not_the_node(
    cluster: Cluster, function: str, args: tuple[Any, ...], reason: str
) -> None:
    cluster.start_broker()
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=10) as client:
        with pytest.raises(TaskFailed) as failure:
            client.execute(function, *args, retries=0)
        assert failure.value.exit_code == 70, failure.value
        assert failure.value.error_type == "WorkerCrashed"
        assert reason in failure.value.message
        assert client.execute("echo", "still here") == "still here"
    assert cluster.node_names() == ["node0"]


def _waiting(status: dict[str, Any]) -> int:
    """Tasks not started: queued at the broker or held by nodes (protocol.md 5.5)."""
    return int(status["queued"]) + int(status["held"])
