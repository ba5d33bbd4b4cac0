"""What a node process tells an elastic supervisor (node/supervision.py): the broker's backlog
hint and whether it works, from a node agent run in this process against the fake broker."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest

from node.agent import NodeAgent
from node.config import NodeConfig
from node.supervision import Demand, DemandReader
from tests.fakes import INTERVAL, FakeBroker
from tests.support import wait_until


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as fake:
        yield fake


@pytest.mark.parametrize("threads", [1, 2], ids=["inline", "threads"])
def test_a_node_process_reports_the_backlog_hint_and_its_work(
    broker: FakeBroker, threads: int
) -> None:
    read_fd, write_fd = os.pipe()
    reader = DemandReader(read_fd)
    config = NodeConfig(
        ("math",),
        broker.url,
        concurrency=1,
        threads=threads,
        name="n1",
        heartbeat_interval=INTERVAL,
        demand_fd=write_fd,
    )
    agent = NodeAgent(config)
    serving = threading.Thread(target=agent.run, name="node-agent")
    serving.start()
    seen: list[Demand] = []

    def reported(wanted: Demand) -> Demand | None:
        demand = reader.read()
        if demand is not None:
            seen.append(demand)
        return demand if demand == wanted else None

    try:
        identity, _ = broker.register()
        wait_until(lambda: reported(Demand(True, None, 0, 0)), 5, what="registered")
        broker.backlog = 5  # from now on in every heartbeat
        wait_until(lambda: reported(Demand(True, 5, 0, 0)), 5, what="the backlog hint")
        broker.run(identity, "slow", "sleep", 6 * INTERVAL)
        # Busy while inside the function, which the inline slot runs on the socket thread:
        # its watchdog reports it.
        wait_until(lambda: reported(Demand(True, 5, 1, 0)), 5, what="busy")
        broker.result("slow")
        broker.backlog = 0
        wait_until(lambda: reported(Demand(True, 0, 0, 1)), 5, what="done and no backlog")
        broker.backlog = None  # a broker that gives no hint: unknown again
        wait_until(lambda: reported(Demand(True, None, 0, 1)), 5, what="the hint unknown")
    finally:
        agent.request_stop()
        serving.join(10)
        os.close(write_fd)
        reader.close()
    assert not serving.is_alive()
    repeated = [b for a, b in pairwise(seen) if a == b]
    assert not repeated, f"a report said again what the one before said: {seen}"
