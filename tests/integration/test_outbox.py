"""The broker's outbox (broker/outbox.py) on real sockets: a ROUTER whose peer does not read.
What the pipe does not take is held in order up to the byte budget; past it answers are
dropped and counted, and what a node must receive (RUN) is held anyway."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from broker import protocol as p
from broker.outbox import Outbox
from tests.support import wait_until

MakeSocket = Callable[[int], zmq.Socket[Any]]
PAYLOAD = b"x" * 65536


def connected_pair(make_socket: MakeSocket) -> tuple[zmq.Socket[Any], zmq.Socket[Any], bytes]:
    """A ROUTER with a pipe of 2 messages, a DEALER that takes (almost) nothing, and the
    DEALER's identity as the ROUTER knows it."""
    router = make_socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 2)
    router.setsockopt(zmq.SNDBUF, 4096)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = make_socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.setsockopt(zmq.RCVBUF, 4096)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart([b"", *p.encode(p.Status())])
    assert router.poll(5000), "no hello from the dealer"
    identity = router.recv_multipart()[0]
    return router, dealer, identity


def answer(i: int) -> list[bytes]:
    return p.encode(p.TaskCompleted(f"t{i}", 0, PAYLOAD))


def run(i: int) -> list[bytes]:
    return p.encode(p.Run(f"r{i}", "f", PAYLOAD))


def drain(dealer: zmq.Socket[Any], outbox: Outbox, router: zmq.Socket[Any]) -> list[str]:
    """Read everything, flushing the outbox meanwhile: the task ids, in order."""
    got: list[str] = []

    def read() -> bool:
        outbox.flush(router)
        while dealer.poll(50):
            message = p.decode(dealer.recv_multipart()[1:])
            assert isinstance(message, (p.TaskCompleted, p.Run))
            got.append(message.task_id)
        return not outbox.held

    wait_until(read, 10, what="the outbox to empty")
    read()
    return got


def test_answers_past_the_budget_are_dropped_in_order_and_counted(make_socket: MakeSocket) -> None:
    router, dealer, peer = connected_pair(make_socket)
    outbox = Outbox(budget=4 * len(PAYLOAD))
    sent = [outbox.send(router, peer, answer(i)) for i in range(200)]
    assert not all(sent) and outbox.dropped == sent.count(False)
    assert outbox.most_held_bytes <= 5 * len(PAYLOAD) + 1024
    got = drain(dealer, outbox, router)
    kept = [f"t{i}" for i, ok in enumerate(sent) if ok]
    assert got == kept  # in order, each once; the dropped never
    assert outbox.view()["outbox_bytes"] == 0 and outbox.view()["outbox_peers"] == 0


def test_a_run_is_held_past_the_budget_never_dropped(make_socket: MakeSocket) -> None:
    router, dealer, peer = connected_pair(make_socket)
    outbox = Outbox(budget=2 * len(PAYLOAD))
    assert all(outbox.send(router, peer, run(i)) for i in range(50))
    assert outbox.dropped == 0 and outbox.held_bytes > outbox.budget
    assert drain(dealer, outbox, router) == [f"r{i}" for i in range(50)]
