"""A node whose own process is held up (stopped, paused) says so when it resumes, and does
not count the broker's silence over that time against the broker (protocol.md 7.2)."""

from __future__ import annotations

import os
import re
import signal
import time

from tests.e2e.conftest import Cluster
from tests.support import wait_until

HELD = 1.0  # seconds the node's process is stopped: less than the broker's 3 s expiry


def test_a_node_held_up_says_so_and_stays_registered(cluster: Cluster) -> None:
    broker = cluster.start_broker("--store", "none", "--heartbeat-interval", "1")
    node = cluster.start_node(name="n1")
    cluster.wait_nodes("n1")
    [listed] = cluster.status()["nodes"]
    agent = listed["pid"]  # the node process (the supervisor's child)
    os.kill(agent, signal.SIGSTOP)
    try:
        time.sleep(HELD)  # the stall itself: nothing is waited for here
    finally:
        os.kill(agent, signal.SIGCONT)

    def said() -> float | None:
        found = re.search(r"loop was held up for ([0-9.]+) s", node.log())
        return float(found.group(1)) if found else None

    held = wait_until(said, 10, what="the node to log its stall", alive=[broker, node])
    assert HELD - 0.1 <= held < HELD + 5
    [after] = cluster.status()["nodes"]
    assert after["pid"] == agent and cluster.status()["counters"].get("nodes_expired", 0) == 0
    assert "silent for" not in node.log()  # the broker was not declared dead
    assert cluster.zsubmit("multiply", "6", "7").stdout.strip() == "42"
