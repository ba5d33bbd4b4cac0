"""Real processes started as users start them: zbroker, znode, zsubmit and the Python client."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from client import Client, TaskFailed
from tests.e2e.conftest import INTERVAL, LIVENESS, Cluster, free_port
from tests.support import wait_until


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    cluster.start_broker()
    cluster.start_node()
    cluster.start_node()
    cluster.wait_nodes("node0", "node1")
    return cluster


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_zsubmit_runs_math_tasks_exactly(two_nodes: Cluster) -> None:
    done = two_nodes.zsubmit("multiply", "5", "10")
    assert (done.returncode, done.stdout.strip()) == (0, "50"), done.stderr
    done = two_nodes.zsubmit("sum_squares", "1", "10000000")
    assert done.stdout.strip() == "333333383333335000000", done.stderr
    done = two_nodes.zsubmit("--json", "hash_text", "hello")
    body = json.loads(done.stdout)
    assert body["exit_code"] == 0 and body["attempts"] == 1
    assert body["result"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_python_client_execute_and_map(two_nodes: Cluster) -> None:
    with Client(two_nodes.url) as client:
        assert client.execute("multiply", 5, 10) == 50
        assert client.execute("fib", 100) == 354224848179261915075
        numbers = list(range(1, 401))
        squares = client.map("power", [(n, 2) for n in numbers])
    assert squares == [n * n for n in numbers]
    completed = [n["completed"] for n in two_nodes.status()["nodes"]]
    assert all(c > 0 for c in completed), f"work was not spread over both nodes: {completed}"


def test_failures_are_clear_and_nodes_keep_serving(two_nodes: Cluster) -> None:
    done = two_nodes.zsubmit("divide", "1", "0")
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr and "divide" in done.stderr
    done = two_nodes.zsubmit("no_such_function", "1")
    assert done.returncode == 1 and "no_such_function" in done.stderr
    done = two_nodes.zsubmit("multiply", "1", "2", "3")
    assert done.returncode == 1 and "BadArguments" in done.stderr
    with Client(two_nodes.url) as client, pytest.raises(TaskFailed) as failed:
        client.execute("divide", 1, 0)
    assert failed.value.exit_code == 1 and failed.value.error_type == "ZeroDivisionError"
    assert two_nodes.zsubmit("add", "2", "3").stdout.strip() == "5"


def test_zsubmit_without_a_broker_says_so(cluster: Cluster) -> None:
    cluster.url = f"tcp://127.0.0.1:{free_port()}"
    done = cluster.zsubmit("--connect-timeout", "0.5", "multiply", "5", "10")
    assert done.returncode == 3
    assert "cannot reach the broker" in done.stderr


def test_zbroker_status_json(two_nodes: Cluster) -> None:
    out = two_nodes.zbroker("status", "--json", timeout=10)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["queued"] == 0
    keys = {
        "id",
        "name",
        "host",
        "pid",
        "functions",
        "capacity",
        "active",
        "completed",
        "last_seen",
    }
    for node in body["nodes"]:
        assert keys <= node.keys()
        assert "multiply" in node["functions"] and node["capacity"] == 1
    # Each znode supervises the node process that registered: its parent.
    parents = sorted(parent_pid(n["pid"]) for n in body["nodes"])
    assert parents == sorted(p.pid for p in two_nodes.nodes)


def test_sigterm_deregisters_at_once_and_finishes_running_work(cluster: Cluster) -> None:
    cluster.start_broker("--heartbeat-interval", "1", "--liveness", "5")  # expiry 5 s
    node = cluster.start_node()
    cluster.wait_nodes("node0")
    results: list[Any] = []
    with Client(cluster.url) as client:
        worker = threading.Thread(target=lambda: results.append(client.execute("sleep", 4.0)))
        worker.start()
        wait_until(lambda: cluster.status()["running"] == 1, 5, what="task running")
        node.signal(signal.SIGTERM)

        def draining_while_running() -> bool:
            status = cluster.status()
            assert status["running"] == 1, "the task ended before the node deregistered"
            return bool(status["nodes"][0]["state"] == "draining")

        # DEREGISTER at once: the broker sees it while the 4 s task still runs (the node's
        # watchdog sends it within 0.2 s; a loaded 2-core machine may take a second more).
        wait_until(draining_while_running, 3.0, what="drain")
        worker.join(10)
    assert results == [4.0]
    assert node.wait(10) == 0
    wait_until(lambda: cluster.node_names() == [], 2, what="node forgotten")


def test_sigkill_mid_task_requeues_to_another_node(two_nodes: Cluster) -> None:
    outcome: list[Any] = []

    def submit() -> None:
        with Client(two_nodes.url) as client:
            outcome.append(client.execute_raw("sleep", [1.0]))

    worker = threading.Thread(target=submit)
    worker.start()

    def busy_name() -> str | None:
        busy = [n["name"] for n in two_nodes.status()["nodes"] if n["active"]]
        return busy[0] if busy else None

    name = wait_until(busy_name, 5, what="task running on a node")
    [victim] = [n for n in two_nodes.nodes if n.name == name]
    [survivor] = [n for n in two_nodes.nodes if n.name != name]
    victim.signal(signal.SIGKILL)  # the znode supervisor: its node process dies with it
    started = time.monotonic()
    worker.join(15)
    assert outcome, "the task never completed"
    [completed] = outcome
    assert completed.exit_code == 0 and completed.attempts == 2
    # detection (interval x liveness + 0.5 s at most) + the rerun of the 1 s task + slack
    assert time.monotonic() - started < INTERVAL * LIVENESS + 0.5 + 1.0 + 1.0
    assert two_nodes.node_names() == [survivor.name]


def test_heartbeats_flow_while_a_cpu_bound_function_runs(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        done = client.execute_raw("spin", [INTERVAL * LIVENESS * 2])  # twice the expiry time
    assert done.exit_code == 0 and done.attempts == 1
    assert cluster.status()["counters"].get("nodes_expired", 0) == 0


def test_restarted_broker_gets_its_nodes_back(cluster: Cluster) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    broker = cluster.start_broker(bind=bind)
    cluster.start_node()
    cluster.wait_nodes("node0")
    broker.signal(signal.SIGKILL)
    broker.wait(5)
    cluster.start_broker(bind=bind)
    cluster.wait_nodes("node0", timeout=15)
    assert cluster.zsubmit("multiply", "6", "7").stdout.strip() == "42"


def test_node_started_before_the_broker_registers_when_it_comes(cluster: Cluster) -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    cluster.url = bind
    cluster.start_node()
    wait_until(
        lambda: "retrying" in cluster.nodes[0].log(), 10, what="node retry log", alive=cluster.nodes
    )
    cluster.start_broker(bind=bind)
    cluster.wait_nodes("node0")


def test_concurrency_runs_supervised_processes_that_are_restarted(cluster: Cluster) -> None:
    cluster.start_broker()
    supervisor = cluster.start_node(functions="util", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    pids = {n["name"]: n["pid"] for n in cluster.status()["nodes"]}
    assert supervisor.pid not in pids.values()
    with Client(cluster.url) as client:
        ran_on = set(client.map("pid", [()] * 20))
    assert ran_on <= set(pids.values())
    os.kill(pids["node0.1"], signal.SIGKILL)
    wait_until(
        lambda: (
            {n["name"]: n["pid"] for n in cluster.status()["nodes"]}.get("node0.1")
            not in (None, pids["node0.1"])
        ),
        10,
        what="node0.1 restarted",
        alive=[supervisor],
    )
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(10) == 0
    wait_until(lambda: cluster.node_names() == [], 5, what="both processes deregistered")


def test_bad_function_set_is_a_clear_startup_error(cluster: Cluster) -> None:
    cluster.start_broker()
    node = cluster.start_node(functions="no_such_set_xyz", concurrency=2)
    assert node.wait(15) == 2
    assert "no_such_set_xyz" in node.log()


def test_node_offers_functions_from_a_user_module(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(
        "def greet(name):\n    return f'hello {name}'\n\ndef _private():\n    return 1\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cluster.start_broker()
    cluster.start_node(functions="userpkg.tasks")
    cluster.wait_nodes("node0")
    assert cluster.status()["nodes"][0]["functions"] == ["greet"]
    assert cluster.zsubmit("greet", "world").stdout.strip() == '"hello world"'


def test_broker_exits_cleanly_on_sigterm_and_tells_its_nodes(cluster: Cluster) -> None:
    broker = cluster.start_broker()
    node = cluster.start_node()
    cluster.wait_nodes("node0")
    broker.signal(signal.SIGTERM)
    assert broker.wait(10) == 0
    wait_until(lambda: "disconnected us" in node.log(), 5, what="node told", alive=[node])


def test_a_failing_task_is_retried_and_its_last_error_reported(cluster: Cluster) -> None:
    cluster.start_broker("--retry-on", "exception")
    cluster.start_node(functions="util")
    cluster.wait_nodes("node0")
    done = cluster.zsubmit("--json", "--retries", "2", "fail", "still broken")
    assert done.returncode == 1
    body = json.loads(done.stdout)
    assert body["attempts"] == 3 and body["exit_code"] == 1
    assert body["error"] == {"type": "RuntimeError", "message": "still broken"}
    assert cluster.status()["counters"]["retried"] == 2
    with Client(cluster.url, retries=0) as client:
        assert client.execute_raw("fail", ["once"]).attempts == 1


def test_a_task_that_cannot_start_in_time_expires(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node()  # one slot
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        busy = threading.Thread(target=lambda: client.execute("sleep", 1.0))
        busy.start()
        wait_until(lambda: cluster.status()["running"] == 1, 5, what="the slot taken")
        started = time.monotonic()
        done = cluster.zsubmit("--json", "--queue-timeout", "0.2", "multiply", "1", "2")
        waited = time.monotonic() - started
        busy.join(10)
    body = json.loads(done.stdout)
    assert done.returncode == 1 and body["exit_code"] == 125 and body["attempts"] == 0
    assert body["error"]["type"] == "Expired"
    assert waited < 1.0, "it waited for the slot instead of expiring"
