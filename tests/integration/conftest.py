"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import StartBroker, fake_brokers


@pytest.fixture
def fake_broker() -> Iterator[StartBroker]:
    """`fake_broker(handler)` starts a scripted broker (tests/fakes.py); every one started
    is closed after the test, and a handler that failed fails the test."""
    with fake_brokers() as start:
        yield start
