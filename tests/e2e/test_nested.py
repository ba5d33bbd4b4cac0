"""Tasks that submit tasks (node.get_client, protocol.md 5.9) with real processes: results,
no deadlock when every slot holds a waiting parent, cancellation passed down, and a parent
run again after its node died that does not run its finished children twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from broker import protocol as p
from client import Client, TaskFailed
from tests.e2e.conftest import Cluster
from tests.support import wait_until

NESTED = "tests.nested_tasks"


def test_a_task_submits_tasks_and_waits_for_their_results(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions=NESTED, concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        assert client.execute("sum_of_squares", 10) == sum(i * i for i in range(10))
        assert client.execute("nested", 4) == 4  # a parent of a parent of a parent
        # map inside a task: its tasks' ids derive from the task's too
        pids = client.execute("pid_of_children", 3, task_id="mapper")
        assert client.result("mapper/0.2") in pids
    counters = cluster.status()["counters"]
    assert counters["completed"] == 2 + 10 + 3 + 1 + 3


@pytest.mark.parametrize("threads", [1, 2], ids=["inline slots", "slot threads"])
def test_four_parents_on_two_slots_each_waiting_for_ten_children_all_finish(
    cluster: Cluster, threads: int
) -> None:
    cluster.start_broker()
    if threads == 1:
        cluster.start_node(functions=NESTED, concurrency=2)
        cluster.wait_nodes("node0.0", "node0.1")
    else:
        cluster.start_node("--threads", "2", functions=NESTED, concurrency=1)
        cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        parents = [client.submit("sum_of_squares", 10, 0.02) for _ in range(4)]
        assert [parent.result(60) for parent in parents] == [285] * 4
        status = client.status()
    assert status["counters"]["completed"] == 44
    assert status["counters"]["waiting"] >= 4  # every parent lent its slot
    assert sum(node["capacity"] for node in status["nodes"]) == 2
    assert all(node["waiting"] == 0 for node in status["nodes"])


def test_cancelling_a_parent_cancels_the_tasks_it_submitted(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions=NESTED, concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        parent = client.submit("sum_of_squares", 6, 30.0)
        wait_until(
            lambda: client.status()["counters"].get("accepted", 0) == 7,
            15,
            what="the parent's six children submitted",
        )
        assert client.cancel(parent.task_id) == "running"
        with pytest.raises(TaskFailed) as cancelled:
            parent.result(10)
        assert cancelled.value.exit_code == p.EXIT_CANCELLED
        wait_until(
            lambda: client.status()["running"] == 0 and client.status()["queued"] == 0,
            15,
            what="nothing left running",
        )
        counters = client.status()["counters"]
    assert counters["cancelled_with_parent"] == 6
    assert counters["cancelled"] == 7 and counters.get("completed", 0) == 0


def test_a_parent_run_again_after_its_node_died_does_not_rerun_finished_children(
    cluster: Cluster, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster.start_broker()
    cluster.start_node(functions=NESTED, concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        parent = client.submit("parent_of_marks", str(marks), 5, 3.0)
        children = [marks / f"child-{i}" for i in range(5)]
        wait_until(  # answered at the broker, not only run: a RESULT lost with a node
            lambda: client.status()["counters"].get("completed", 0) == 5,  # runs again
            20,
            what="the five children answered",
        )
        first = int((marks / "parent.pid").read_text().split()[0])
        os.kill(first, signal.SIGKILL)  # the node process running the parent, mid-pause
        assert parent.result(60) == 5
    pids = (marks / "parent.pid").read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # it ran twice, in two processes
    for child in children:
        assert len(child.read_text().split()) == 1, f"{child.name} ran more than once"
    assert cluster.status()["counters"]["completed"] == 1 + 5


def test_a_child_run_in_a_lent_slot_is_stopped_at_its_task_timeout(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions=NESTED, concurrency=1)  # one inline slot: a helper runs it
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        parent = client.submit("parent_of_slow_child", 30.0, 0.5, retries=0)
        with pytest.raises(TaskFailed) as failed:
            parent.result(30)
        with pytest.raises(TaskFailed) as child:
            client.result(f"{parent.task_id}/0", timeout=10)
    assert child.value.exit_code == p.EXIT_TIMEOUT
    # Its timeout ended the node process, and the parent with it.
    assert failed.value.exit_code == p.EXIT_WORKER_CRASHED


def test_a_split_job_run_by_a_task_is_cancelled_with_it(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions=[NESTED, "tests.split_tasks"], concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        assert client.execute("job_inside", 3, 0.0) == sum(k * k for k in range(1, 101))
        parent = client.submit("job_inside", 4, 30.0)
        wait_until(  # the parent, its split, four parts and the combine
            lambda: client.status()["counters"].get("accepted", 0) == 6 + 7,
            15,
            what="the job's parts submitted",
        )
        client.cancel(parent.task_id)
        wait_until(
            lambda: client.status()["running"] == 0 and client.status()["queued"] == 0,
            15,
            what="nothing left running",
        )
        counters = client.status()["counters"]
    assert counters["cancelled_with_parent"] == 5  # four parts and the combine
    assert counters["cancelled"] == 6
