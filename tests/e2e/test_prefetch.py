"""Prefetch and taking held tasks back (protocol.md 5.5), and placement that spreads, with
real processes: nodes started as users start them (default prefetch)."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from client import Client
from tests.e2e.conftest import Cluster
from tests.support import wait_until


def nodes_by_name(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {node["name"]: node for node in cluster.status()["nodes"]}


def in_thread(out: dict[str, Any], key: str, call: Any, *args: Any) -> threading.Thread:
    """Run `call(*args)` in a thread; its result (or exception) goes to `out[key]`."""

    def run() -> None:
        try:
            out[key] = call(*args)
        except BaseException as exc:
            out[f"{key}_error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_tasks_held_behind_a_long_one_run_at_once_on_a_node_that_arrives(
    cluster: Cluster,
) -> None:
    cluster.start_broker()
    first = cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}
    with Client(cluster.url, timeout=30) as client:
        long = in_thread(out, "long", client.execute, "sleep", 5)
        wait_until(
            lambda: cluster.status()["running"] == 1, 10, alive=[first], what="sleep 5 running"
        )
        with Client(cluster.url, timeout=30) as other:
            short = in_thread(out, "short", other.map, "add", [(i, i) for i in range(6)])
            # A node that has not answered yet holds one task beyond its slot.
            wait_until(
                lambda: nodes_by_name(cluster)["node0"]["held"] == 1,
                10,
                alive=[first],
                what="a short task held behind the long one",
            )
            second = cluster.start_node(functions="math")
            wait_until(lambda: "node1" in nodes_by_name(cluster), 15, alive=[second], what="node1")
            arrived = time.monotonic()
            short.join(10)
            took = time.monotonic() - arrived
        assert out.get("short") == [2 * i for i in range(6)], out
        assert took < 1.0, f"the held tasks took {took:.2f} s to run on the new node"
        nodes = nodes_by_name(cluster)
        assert nodes["node1"]["completed"] == 6 and nodes["node0"]["completed"] == 0
        assert cluster.status()["counters"]["retracted"] == 1
        assert long.is_alive(), "the long task ended early: the test measured nothing"
        long.join(10)
    assert out.get("long") == 5, out


def test_a_node_that_arrives_late_takes_half_the_work_of_a_busy_one(cluster: Cluster) -> None:
    """16 tasks of 0.5 s on two one-slot nodes take about 4 s, never the 8 s of one node
    running them all while the other idles (40 tasks of 1 s, scaled down). A node holds
    about 10 ms of work beyond its slot: one task of these, which the other may take."""
    cluster.start_broker()
    first = cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}
    with Client(cluster.url, timeout=60) as client:
        started = time.monotonic()
        work = in_thread(out, "map", client.map, "sleep", [(0.5,)] * 16)
        wait_until(lambda: cluster.status()["running"] == 1, 10, alive=[first], what="running")
        second = cluster.start_node(functions="math")
        wait_until(lambda: "node1" in nodes_by_name(cluster), 15, alive=[second], what="node1")
        work.join(30)
        took = time.monotonic() - started
    assert out.get("map") == [0.5] * 16, out
    nodes = nodes_by_name(cluster)
    assert nodes["node1"]["completed"] >= 5, nodes
    assert took < 7.0, f"16 tasks of 0.5 s on two nodes took {took:.1f} s"


def test_sequential_tasks_spread_over_idle_nodes(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0", "node1")
    with Client(cluster.url, timeout=30) as client:
        for i in range(100):
            assert client.execute("add", i, 1) == i + 1
    done = [node["completed"] for node in cluster.status()["nodes"]]
    assert sum(done) == 100 and min(done) >= 30, done


def test_a_client_is_answered_while_another_floods_the_queue(cluster: Cluster) -> None:
    """Submitters of one priority take turns (protocol.md 5.1): 2,000 tasks of 10 ms queued
    by one client (20 s of work) do not keep another client's calls waiting."""
    cluster.start_broker()
    node = cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    out: dict[str, Any] = {}
    with Client(cluster.url, timeout=60) as flood, Client(cluster.url, timeout=10) as other:
        flood_map = functools.partial(flood.map, window=2000)
        flooding = in_thread(out, "flood", flood_map, "sleep", [(0.01,)] * 2000)
        wait_until(lambda: cluster.status()["queued"] > 1000, 10, alive=[node], what="a flood")
        for i in range(3):
            started = time.monotonic()
            assert other.execute("add", i, 1) == i + 1
            took = time.monotonic() - started
            assert took < 2.0, f"call {i} of the other client took {took:.2f} s"
        assert flooding.is_alive(), "the flood ended first: the test measured nothing"
        assert cluster.status()["queued"] > 500
