"""Many nodes, against simulated ones (tools/nodesim.py): a broker whose loop stalls declares
none of its live nodes dead and runs nothing twice, yet finds the nodes that really fell
silent within the expiry (protocol.md 7.2); nodes that all connect at once each register
with one REGISTER (the listen backlog, patient nodes); STATUS stays small at 5,000 nodes
and lists every one on request (3.10)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from client import Client
from tests.e2e.conftest import Cluster, reaped_cluster
from tests.integration.test_nodesim import tool
from tests.support import wait_until

# The defaults of `zbroker start`: the stall below must be shorter than the expiry for the
# test to mean anything.
INTERVAL, LIVENESS = 1.0, 3
EXPIRY = INTERVAL * LIVENESS
STALL = 2.5  # seconds the broker is stopped
SLEEPERS = 100  # tasks running on nodes while the broker stalls


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with reaped_cluster(request, tmp_path) as made:
        made.start_broker("--heartbeat-interval", str(INTERVAL), "--liveness", str(LIVENESS))
        yield made


def test_a_stalled_broker_declares_no_live_node_dead_then_finds_the_silent_ones(
    cluster: Cluster,
) -> None:
    broker = cluster.broker
    assert broker is not None
    # Started over one interval, the nodes heartbeat spread over it: some are always near
    # the end of their silence when the stall begins.
    with tool.NodeSim(
        cluster.url, nodes=1000, processes=2, functions=("sleep",), stagger=INTERVAL
    ) as sim:
        sim.wait_registered(timeout=60)
        wait_until(lambda: cluster.status()["nodes_total"] == 1000, 30, what="1,000 nodes")
        with Client(cluster.url, timeout=60) as client:
            futures = [client.submit("sleep", 2 * STALL) for _ in range(SLEEPERS)]
            wait_until(
                lambda: cluster.status()["running"] == SLEEPERS,
                30,
                what="the sleeps running",
                alive=[broker],
            )
            broker.signal(signal.SIGSTOP)
            try:
                time.sleep(STALL)  # the stall itself: nothing is waited for here
            finally:
                broker.signal(signal.SIGCONT)
            answers = [future.result(timeout=60) for future in futures]
        assert answers == [2 * STALL] * SLEEPERS
        status = cluster.status()
        counters = status["counters"]
        assert counters.get("nodes_expired", 0) == 0, counters
        assert counters.get("retried", 0) == 0, counters  # nothing ran twice
        assert counters.get("loop_stalls", 0) >= 1, counters  # the stall was seen, and said
        assert status["nodes_total"] == 1000
        stats = sim.stats()
        assert stats["broker_deaths"] == stats["disconnects"] == 0, stats
        assert stats["registers_sent"] == 1000, stats  # no node registered again
        assert stats["runs"] == SLEEPERS

        # Nodes that really fall silent are still found, within the expiry.
        frozen = set(sim.freeze(100))
        since = time.monotonic()
        wait_until(
            lambda: cluster.status()["nodes_total"] == 900,
            EXPIRY + 5,
            what="the frozen nodes found dead",
            alive=[broker],
        )
        found = time.monotonic() - since
        assert found <= EXPIRY + 1.0, f"found {found:.2f} s after they fell silent"
        assert frozen.isdisjoint(cluster.node_names())
        assert cluster.status()["counters"]["nodes_expired"] == 100


def test_two_thousand_nodes_connecting_at_once_send_one_register_each(cluster: Cluster) -> None:
    with tool.NodeSim(cluster.url, nodes=2000, processes=2, functions=("noop",)) as sim:
        stats = sim.wait_registered(timeout=60)
        assert stats["register_counts"] == {"1": 2000}, stats["register_counts"]
        wait_until(lambda: cluster.status()["nodes_total"] == 2000, 30, what="2,000 nodes")
        assert cluster.status()["counters"]["nodes_registered"] == 2000


def test_status_at_five_thousand_nodes_lists_the_busiest_and_every_node_on_request(
    cluster: Cluster,
) -> None:
    """A default STATUS stays small however many nodes there are (protocol.md 3.10), and
    `zbroker status --nodes --json` pages through every one. (What a STATUS costs the
    broker's loop is tools/scalebench.py's to measure: about 2.4 ms at 5,000 nodes.)"""
    with tool.NodeSim(cluster.url, nodes=5000, processes=2, functions=("noop",)) as sim:
        sim.wait_registered(timeout=60)
        wait_until(lambda: cluster.status()["nodes_total"] == 5000, 30, what="5,000 nodes")
        body = cluster.status()
        assert len(body["nodes"]) == 50 and body["nodes_listed"] == "busiest"
        assert body["by_function"]["noop"]["nodes"] == 5000
        assert body["slots_total"] == 5000 and body["slots_busy"] == 0
        assert len(orjson.dumps(body)) < 32_000
        done = cluster.zbroker("status", "--nodes", "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        listed = orjson.loads(done.stdout)["nodes"]
        assert len(listed) == 5000
        assert len({node["id"] for node in listed}) == 5000
        shown = cluster.zbroker("status", timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert "the 50 busiest of 5000 node processes" in shown.stdout
