"""broker.protocol.frames on real sockets: whole messages in and out, routing, readiness."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from broker.protocol.frames import (
    NOBLOCK,
    TimedReceiver,
    readable,
    recv_frames,
    send_frames,
    send_routed,
    wait_readable,
)


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"node-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield router, dealer
    finally:
        context.destroy(linger=0)


def test_frames_arrive_whole_and_in_order(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    router, dealer = pair
    frames = [b"", b"ZTB1", b"RESULT", b'{"task_id":"t1"}', b"x" * 100_000]
    send_frames(dealer, frames)
    assert wait_readable(router, 5000)
    assert recv_frames(router) == [b"node-1", *frames]


def test_routed_send_reaches_the_named_peer(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    router, dealer = pair
    send_frames(dealer, [b"", b"hello"])  # the router learns the peer
    assert wait_readable(router, 5000)
    recv_frames(router)
    send_routed(router, b"node-1", [b"ZTB1", b"RUN", b"{}", b"[]"], NOBLOCK)
    assert wait_readable(dealer, 5000)
    assert recv_frames(dealer) == [b"", b"ZTB1", b"RUN", b"{}", b"[]"]


def test_routed_send_to_an_unknown_peer_fails_loudly(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    router, _ = pair
    with pytest.raises(zmq.ZMQError) as caught:
        send_routed(router, b"nobody", [b"ZTB1", b"RUN"], NOBLOCK)
    assert caught.value.errno == zmq.EHOSTUNREACH


def test_readiness_and_an_empty_socket() -> None:
    # inproc: a sent message is in the peer's queue at once, so readiness is exact.
    context: zmq.Context[Any] = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.bind("inproc://wire-test")
        dealer = context.socket(zmq.DEALER)
        dealer.connect("inproc://wire-test")
        assert not readable(router)
        assert not wait_readable(router, 0)
        with pytest.raises(zmq.Again):
            recv_frames(router, NOBLOCK)
        send_frames(dealer, [b"", b"one"])
        send_frames(dealer, [b"", b"two"])
        assert wait_readable(router, 0)
        assert recv_frames(router, NOBLOCK)[-1] == b"one"
        assert readable(router)
        assert recv_frames(router, NOBLOCK)[-1] == b"two"
        assert not readable(router)
    finally:
        context.destroy(linger=0)


def test_timed_receiver_waits_for_a_message_and_gives_up_after_its_timeout(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    router, dealer = pair
    receiver = TimedReceiver(router)
    started = time.monotonic()
    assert receiver.recv(50) is None  # nothing sent: it waits about 50 ms, then gives up
    assert 0.04 <= time.monotonic() - started < 2.0
    assert router.getsockopt(zmq.RCVTIMEO) == 50
    send_frames(dealer, [b"", b"hello"])
    assert receiver.recv(5000) == [b"node-1", b"", b"hello"]  # the wait ends with it
    assert router.getsockopt(zmq.RCVTIMEO) == 5000
    assert receiver.recv(0) is None  # 0: only a message already waiting
