"""How a node judges its broker dead (protocol.md 7.2): after interval x liveness once the
connection was lost, twice that while it holds, and never counting the node's own stalls."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.link import BrokerLink

EXPIRY = 3.0  # interval 1 s x liveness 3


@pytest.fixture
def link() -> Iterator[BrokerLink]:
    made = BrokerLink("tcp://127.0.0.1:9", 1.0, 3)  # no socket is opened
    made.last_heard = 100.0
    yield made
    made.close(clean=False)


def test_a_broker_whose_connection_holds_gets_twice_the_expiry(link: BrokerLink) -> None:
    assert not link.broker_dead(100.0 + EXPIRY)
    assert not link.broker_dead(100.0 + 2 * EXPIRY - 0.01)
    assert link.broker_dead(100.0 + 2 * EXPIRY)


def test_a_broker_whose_connection_was_lost_gets_the_expiry(link: BrokerLink) -> None:
    link._lost = True  # what the socket monitor saw
    assert not link.broker_dead(100.0 + EXPIRY - 0.01)
    assert link.broker_dead(100.0 + EXPIRY)


def test_the_nodes_own_stall_is_not_counted_against_the_broker(link: BrokerLink) -> None:
    link.excuse(4.0, now=105.0)  # the node was stopped for 4 of those 5 s
    assert link.last_heard == 104.0
    assert not link.broker_dead(100.0 + 2 * EXPIRY)
    assert link.broker_dead(104.0 + 2 * EXPIRY)
    link.excuse(60.0, now=110.0)  # never heard later than now
    assert link.last_heard == 110.0
