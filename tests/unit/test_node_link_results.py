"""What a node keeps to send its broker: RESULTs packed for one broker go in pairs to a
broker that does not read the packed form (protocol.md 2.5)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.protocol import Batch, Registered, Result, encode, encode_packed
from node.link import BrokerLink


@pytest.fixture
def link() -> Iterator[BrokerLink]:
    made = BrokerLink("tcp://127.0.0.1:9", 1.0, 3)  # no socket is opened
    yield made
    made.close(clean=False)


def test_results_kept_packed_go_in_pairs_to_a_broker_that_does_not_read_them(
    link: BrokerLink,
) -> None:
    """Kept across a reconnection (unconfirmed or unsent), they are sent after REGISTERED:
    as they are if it says `packed`, else in pairs; a message of one task is left alone."""
    results = (Result("a", 0, b"1", None, 1), Result("b", 0, b"2", None, 1))
    packed, alone = encode_packed(results), encode(results[0])
    link.unsent = [packed, alone]
    link.on_registered(Registered("n", 1.0, 3, packed=True))
    assert link.unsent == [packed, alone]
    link.on_registered(Registered("n", 1.0, 3))
    assert link.unsent == [encode(Batch(results)), alone]
