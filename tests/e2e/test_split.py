"""Split jobs (Client.split, zsubmit --split, node.splitting) with real processes: parts as
tasks on every node, a failing part named, a node SIGKILLed mid-job, rounds of combines,
cancellation."""

from __future__ import annotations

import signal

import pytest

from broker import protocol as p
from client import Client, TaskFailed
from tests.e2e.conftest import Cluster
from tests.support import wait_until

SUM_1_TO_10M = 333333383333335000000


def test_a_split_job_runs_its_parts_as_tasks_and_combines_them(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0", "node1")
    with Client(cluster.url) as client:
        job = client.split("sum_squares", 1, 10_000_000, parts=10)
        assert job.result(30) == SUM_1_TO_10M
        assert len(job.parts) == 10 and all(part.result(1) > 0 for part in job.parts)
        assert client.result(job.task_id) == SUM_1_TO_10M  # the job's id is its answer's
    counters = cluster.status()["counters"]
    assert counters["completed"] == 12  # the split, ten parts, the combine
    # The parts ran on both nodes.
    done = {node["name"]: node["completed"] for node in cluster.status()["nodes"]}
    assert set(done) == {"node0", "node1"} and min(done.values()) > 0, done


def test_zsubmit_split_prints_the_combined_sum(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    out = cluster.zsubmit("--split", "7", "sum_squares", "1", "10000000")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{SUM_1_TO_10M}\n", "")
    refused = cluster.zsubmit("--split", "3", "fib", "10")
    assert refused.returncode == 1
    assert "fib does not declare how to split it" in refused.stderr


def test_a_part_that_fails_for_good_fails_the_job_naming_it(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="tests.split_tasks")
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        job = client.split("unlucky_sum", 1, 100, parts=10, retries=0)
        with pytest.raises(TaskFailed) as failed:
            job.result(30)
    assert failed.value.exit_code == p.EXIT_DEPENDENCY_FAILED
    # Part 1 holds 11..20.
    part = f"{job.task_id}:1 (unlucky_sum)"
    assert f"its dependency {part} failed (exit 1: LookupError: 13 is unlucky)" in str(failed.value)


def test_a_job_of_more_parts_than_one_task_may_depend_on_combines_in_rounds(
    cluster: Cluster,
) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url) as client:
        job = client.split("sum_squares", 1, 10_000_000, parts=600)
        assert job.result(60) == SUM_1_TO_10M
        assert len(job.parts) == 600
    # 600 parts: three combines of up to 256, then the job's own.
    assert cluster.status()["counters"]["completed"] == 1 + 600 + 3 + 1


def test_a_split_job_completes_when_a_node_is_killed_in_its_middle(cluster: Cluster) -> None:
    cluster.start_broker()
    victim = cluster.start_node(functions="tests.split_tasks", concurrency=2)
    cluster.start_node(functions="tests.split_tasks", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1", "node1.0", "node1.1")
    with Client(cluster.url) as client:
        job = client.split("slow_sum_squares", 1, 1_000_000, 0.05, parts=100)
        wait_until(
            lambda: sum(part.done() for part in job.parts) >= 20,
            30,
            what="a fifth of the parts done",
            alive=[victim],
        )
        victim.signal(signal.SIGKILL)  # the znode supervisor: its node processes die with it
        assert job.result(60) == sum(k * k for k in range(1, 1_000_001))
    assert cluster.status()["counters"]["completed"] == 102


def test_cancelling_a_job_cancels_its_parts(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="tests.split_tasks")
    cluster.wait_nodes("node0")
    with Client(cluster.url) as client:
        job = client.split("slow_sum_squares", 1, 100, 5.0, parts=4)
        parts = job.wait_for_parts(30)
        wait_until(lambda: client.status()["running"] == 1, 10, what="a part running")
        assert job.cancel()
        wait_until(
            lambda: client.status()["counters"].get("cancelled", 0) >= 4,
            10,
            what="the parts cancelled",
        )
        assert all(part.cancelled() for part in parts)
        status = client.status()
    assert (status["queued"], status["running"], status["waiting_dependencies"]) == (0, 0, 0)
