"""Errors that say what happened: nothing at the broker's URL (BrokerUnreachable, within the
connect timeout) told apart from a broker that does not answer (BrokerTimeout, which asks
whether the broker runs only when it never answered), and requests over the message size
limit refused before they are sent (MessageTooLarge)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from broker.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Status,
    StatusReply,
    decode,
    encode,
)
from client import (
    BrokerTimeout,
    BrokerUnreachable,
    Client,
    ClientError,
    MessageTooLarge,
    ReqLink,
)
from client.control import ControlClient
from tests.fakes import (
    STATUS_BODY,
    FakeBroker,
    Received,
    Reply,
    StartBroker,
    ignore_all,
    serve_functions,
    unused_endpoint,
)

CONNECT_TIMEOUT = 0.5


def _unreachable(call: Callable[[], Any]) -> tuple[BrokerUnreachable, float]:
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as info:
        call()
    return info.value, time.monotonic() - started


# ------------------------------------------------------------------------------ no broker


@pytest.mark.parametrize("call", ["execute", "map", "status", "future"])
def test_no_broker_is_unreachable_within_the_connect_timeout(call: str) -> None:
    url = unused_endpoint()
    with Client(url, timeout=30, connect_timeout=CONNECT_TIMEOUT) as client:
        calls: dict[str, Callable[[], Any]] = {
            "execute": lambda: client.execute("multiply", 1, 2),
            "map": lambda: client.map("multiply", [(1, 2), (3, 4)]),
            "status": lambda: client.status(timeout=30),
            "future": lambda: client.submit("multiply", 1, 2).result(30),
        }
        error, elapsed = _unreachable(calls[call])
    assert CONNECT_TIMEOUT <= elapsed < CONNECT_TIMEOUT + 2
    assert isinstance(error, ConnectionError) and isinstance(error, ClientError)
    assert not isinstance(error, BrokerTimeout)
    assert str(error) == (
        f"cannot reach the broker at {url}: nothing accepts connections there (connection "
        f"refused or no route) (tried for {CONNECT_TIMEOUT:g} s); is `zbroker start` running "
        "there, and is the address right?"
    )
    assert (error.url, error.waited) == (url, CONNECT_TIMEOUT)


def test_a_shorter_timeout_ends_the_wait_as_unreachable_too() -> None:
    with Client(unused_endpoint(), timeout=0.3, connect_timeout=30) as client:
        error, elapsed = _unreachable(lambda: client.execute("multiply", 1, 2))
    assert elapsed < 2 and error.waited == 0.3


def test_a_host_that_does_not_resolve_says_so() -> None:
    with Client("tcp://no-such-host.invalid:5000", connect_timeout=CONNECT_TIMEOUT) as client:
        error, _ = _unreachable(lambda: client.execute("multiply", 1, 2))
    assert "no connection could be made (does the host name resolve?)" in str(error)


@pytest.fixture
def not_zeromq() -> Iterator[str]:
    """A TCP port that accepts connections and never speaks ZeroMQ."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"


def test_a_port_that_is_not_zeromq_says_so(not_zeromq: str) -> None:
    with Client(not_zeromq, connect_timeout=CONNECT_TIMEOUT) as client:
        error, _ = _unreachable(lambda: client.execute("multiply", 1, 2))
    assert "accepts TCP connections there but does not complete a ZeroMQ handshake" in str(error)


def test_a_broker_that_comes_up_within_the_connect_timeout_answers() -> None:
    """The request waits in its socket while nothing listens, and goes once a broker does."""
    url = unused_endpoint()
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)

    def late_broker() -> None:
        # The scenario itself, not a wait for an outcome: nothing listens for the first
        # half second of the request (the request's own outcome is polled with a deadline).
        time.sleep(0.5)
        router.bind(url)
        if router.poll(10_000):
            identity, _, *frames = router.recv_multipart()
            assert decode(frames) == Status()
            router.send_multipart([identity, b"", *encode(StatusReply(STATUS_BODY))])

    thread = threading.Thread(target=late_broker)
    thread.start()
    try:
        with ReqLink(url, connect_timeout=5) as link:
            assert ControlClient(link).status(timeout=10) == STATUS_BODY
            assert link.contact.reached and link.contact.answered
    finally:
        thread.join(15)
        router.close()
        context.term()


def test_once_reached_no_socket_is_watched(
    fake_broker: StartBroker, context: zmq.Context[Any]
) -> None:
    broker = fake_broker(serve_functions({"multiply": lambda a, b: a * b}))
    with ReqLink(broker.url) as link:
        assert not link.contact.reached
        ControlClient(link).status()
        assert link.contact.reached
        sock, watch = link.contact.open(context, zmq.REQ)
        sock.close()
        assert watch is None


# ------------------------------------------------------------------------------ no answer


def test_a_silent_broker_times_out_and_asks_whether_it_runs(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    client = Client(broker.url, timeout=0.5, connect_timeout=CONNECT_TIMEOUT)
    with client, pytest.raises(BrokerTimeout) as info:
        client.execute("multiply", 1, 2)
    assert str(info.value) == (
        f"no answer from the broker at {broker.url} within 0.5 s; is `zbroker start` running there?"
    )
    assert not info.value.answered_before


def test_a_broker_that_answered_before_is_not_said_to_be_down(fake_broker: StartBroker) -> None:
    answered: list[Received] = []

    def answer_once(received: Received) -> list[Reply]:
        if answered:
            return []
        answered.append(received)
        return [(received.identity, StatusReply(STATUS_BODY))]

    broker = fake_broker(answer_once)
    with Client(broker.url, resend_interval=0.2) as client:
        client.status()
        with pytest.raises(BrokerTimeout) as info:
            client.status(timeout=0.5)
    assert str(info.value) == f"no answer from the broker at {broker.url} within 0.5 s"
    assert info.value.answered_before


# ------------------------------------------------------------------------------ too large


def test_the_default_limit_is_the_brokers() -> None:
    with Client(unused_endpoint()) as client:
        assert client.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="max_message_size must be an integer of at least"):
        Client(unused_endpoint(), max_message_size=10)


def test_a_task_over_the_limit_is_refused_before_it_is_sent(fake_broker: StartBroker) -> None:
    broker = fake_broker(serve_functions({"echo": lambda text: len(text)}))
    text = "x" * 200_000
    with Client(broker.url, max_message_size=100_000) as client:
        with pytest.raises(MessageTooLarge) as info:
            client.execute("echo", text, task_id="big")
        assert client.execute("echo", "small") == 5
    error = info.value
    assert isinstance(error, ValueError)
    assert (error.limit, error.size) == (100_000, error.size) and error.size > 200_002
    assert str(error).startswith(
        f"the EXECUTE of task big (echo, 200,004 bytes of arguments) is {error.size:,} bytes, "
        "over the message size limit of 100,000 bytes; "
    )
    assert [execute.spec.args for _, execute in broker.executes()] == [b'["small"]']


def test_map_refuses_only_the_tasks_over_the_limit(fake_broker: StartBroker) -> None:
    broker: FakeBroker = fake_broker(serve_functions({"echo": lambda text: len(text)}))
    with Client(broker.url, max_message_size=100_000) as client:
        out = client.map("echo", [("a",), ("x" * 200_000,), ("bc",)], return_exceptions=True)
        with pytest.raises(MessageTooLarge):
            client.map("echo", [("x" * 200_000,)])
    assert out[0] == 1 and out[2] == 2
    assert isinstance(out[1], MessageTooLarge) and "200,004 bytes of arguments" in str(out[1])
    assert len(broker.executes()) == 2
