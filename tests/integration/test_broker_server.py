"""The broker server in-process (strict mode) with scripted peers on real sockets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from broker import protocol as p
from broker.scheduler import SchedulerConfig
from broker.server import BATCH, BrokerConfig, BrokerServer
from tests.support import wait_until

INTERVAL = 0.1
LIVENESS = 3
TIMEOUT_MS = 3000


class Broker:
    def __init__(self, **config: Any) -> None:
        scheduler = SchedulerConfig(heartbeat_interval=INTERVAL, liveness=LIVENESS)
        defaults: dict[str, Any] = {"scheduler": scheduler, "strict": True}
        self.server = BrokerServer(BrokerConfig("tcp://127.0.0.1:*", **(defaults | config)))
        self.endpoint = self.server.bind()
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(5)
        assert not self.thread.is_alive(), "broker loop did not stop"


class Peer:
    """A DEALER speaking ZTB with explicit delimiters (a node or a pipelined client)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, message: p.Message) -> None:
        self.sock.send_multipart([b"", *p.encode(message)])

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int = TIMEOUT_MS, skip_heartbeats: bool = True) -> p.Message:
        while True:
            assert self.sock.poll(timeout_ms), "no message from the broker in time"
            frames = self.sock.recv_multipart()
            assert frames[0] == b""
            message = p.decode(frames[1:])
            if not (skip_heartbeats and isinstance(message, p.Heartbeat)):
                return message

    def register(self, name: str, functions: tuple[str, ...] = ("f",), capacity: int = 1) -> None:
        self.send(p.Register(name, "localhost", 123, functions, capacity))
        assert isinstance(self.recv(), p.Registered)

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


@pytest.fixture
def small_broker() -> Iterator[Broker]:
    """A broker that refuses messages over 4096 bytes."""
    b = Broker(max_message_size=4096)
    try:
        yield b
    finally:
        b.stop()


def new_peer(broker: Broker, peers: list[Peer]) -> Peer:
    peer = Peer(broker.endpoint)
    peers.append(peer)
    return peer


def status(broker: Broker) -> dict[str, Any]:
    from broker.control import status as query

    return query(broker.endpoint, timeout=3.0)


def req_roundtrip(endpoint: str, frames: list[bytes]) -> p.Message:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        assert sock.poll(TIMEOUT_MS), "no reply from the broker"
        return p.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)


def test_register_execute_run_result_completed(broker: Broker, peers: list[Peer]) -> None:
    node = new_peer(broker, peers)
    node.send(p.Register("n1", "localhost", 123, ("multiply",), 2))
    registered = node.recv()
    assert registered == p.Registered(registered.node_id, INTERVAL, LIVENESS)  # type: ignore[union-attr]
    client = new_peer(broker, peers)
    client.send(p.Execute("t1", "multiply", b"[5,10]", 5))
    run = node.recv()
    assert run == p.Run("t1", "multiply", b"[5,10]", 1)
    node.send(p.Result("t1", 0, b"50"))
    assert client.recv() == p.TaskCompleted("t1", 0, b"50", None, 1)


def test_req_client_gets_unknown_function_error(broker: Broker, peers: list[Peer]) -> None:
    new_peer(broker, peers).register("n1", ("f",))
    reply = req_roundtrip(broker.endpoint, p.encode(p.Execute("t1", "nope", b"[]")))
    assert isinstance(reply, p.TaskCompleted)
    assert reply.exit_code == p.EXIT_UNKNOWN_FUNCTION
    assert reply.error is not None and "nope" in reply.error.message


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"ZTB2", p.EXECUTE, b"{}", b"[]"], p.ERR_UNSUPPORTED_VERSION),
        ([b"HTTP/1.1", b"GET"], p.ERR_MALFORMED),
        ([p.TAG, b"FROBNICATE"], p.ERR_UNKNOWN_COMMAND),
        ([p.TAG, p.EXECUTE, b"{not json", b"[]"], p.ERR_MALFORMED),
        (
            [p.TAG, p.EXECUTE, b'{"task_id": "t", "function": "f", "priority": 99}', b"[]"],
            "malformed",
        ),
        ([p.TAG, p.RUN, b'{"task_id": "t", "function": "f"}', b"[]"], p.ERR_UNKNOWN_COMMAND),
        ([p.TAG], p.ERR_MALFORMED),
    ],
)
def test_bad_input_gets_an_error_and_the_broker_keeps_serving(
    broker: Broker, peers: list[Peer], frames: list[bytes], code: str
) -> None:
    reply = req_roundtrip(broker.endpoint, frames)
    assert isinstance(reply, p.Error) and reply.code == code, reply
    counters = status(broker)["counters"]
    assert counters[f"refused_{code}"] == 1
    node = new_peer(broker, peers)
    node.register("n1")  # still serving


def test_missing_delimiter_is_refused(broker: Broker, peers: list[Peer]) -> None:
    peer = new_peer(broker, peers)
    peer.send_raw(p.encode(p.Heartbeat()))  # a DEALER that forgot the empty frame
    reply = peer.recv()
    assert isinstance(reply, p.Error) and reply.code == p.ERR_MALFORMED


def test_oversized_message_is_refused_with_its_task_id(small_broker: Broker) -> None:
    big = p.Execute("t-big", "f", b"[" + b"1," * 4000 + b"1]")
    reply = req_roundtrip(small_broker.endpoint, p.encode(big))
    assert reply == p.Error(p.ERR_TOO_LARGE, reply.message, "t-big")  # type: ignore[union-attr]
    assert "4096" in reply.message  # type: ignore[union-attr]


def test_silent_node_is_declared_dead_and_its_task_completes_elsewhere(
    broker: Broker, peers: list[Peer]
) -> None:
    doomed = new_peer(broker, peers)
    doomed.register("doomed")
    client = new_peer(broker, peers)
    client.send(p.Execute("t1", "f", b"[]"))
    assert isinstance(doomed.recv(), p.Run)
    rescuer = new_peer(broker, peers)
    rescuer.register("rescuer")
    # doomed falls silent; rescuer answers heartbeats until the task comes to it.
    deadline_ms = int((INTERVAL * LIVENESS + 0.5) * 1000)
    while True:
        message = rescuer.recv(deadline_ms, skip_heartbeats=False)
        if isinstance(message, p.Run):
            break
        rescuer.send(p.Heartbeat())
    assert message == p.Run("t1", "f", b"[]", 2)
    rescuer.send(p.Result("t1", 0, b"1"))
    assert client.recv() == p.TaskCompleted("t1", 0, b"1", None, 2)
    assert [n["name"] for n in status(broker)["nodes"]] == ["rescuer"]


def test_node_gets_heartbeats_and_unknown_heartbeats_get_disconnect(
    broker: Broker, peers: list[Peer]
) -> None:
    node = new_peer(broker, peers)
    node.register("n1")
    assert isinstance(node.recv(skip_heartbeats=False), p.Heartbeat)
    stranger = new_peer(broker, peers)
    stranger.send(p.Heartbeat())
    assert isinstance(stranger.recv(), p.Disconnect)


def test_resend_of_pending_task_runs_once_and_answers_both(
    broker: Broker, peers: list[Peer]
) -> None:
    node = new_peer(broker, peers)
    node.register("n1")
    first, second = new_peer(broker, peers), new_peer(broker, peers)
    first.send(p.Execute("t1", "f", b"[]"))
    assert isinstance(node.recv(), p.Run)
    second.send(p.Execute("t1", "f", b"[]"))
    wait_until(lambda: status(broker)["counters"].get("resubmitted") == 1, 3, what="resend")
    node.send(p.Result("t1", 0, b"7"))
    assert first.recv() == second.recv() == p.TaskCompleted("t1", 0, b"7", None, 1)
    assert status(broker)["counters"]["accepted"] == 1


def test_deregister_drains_then_forgets(broker: Broker, peers: list[Peer]) -> None:
    node = new_peer(broker, peers)
    node.register("n1")
    client = new_peer(broker, peers)
    client.send(p.Execute("t1", "f", b"[]"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Deregister())
    wait_until(lambda: status(broker)["nodes"][0]["state"] == "draining", 3, what="draining")
    node.send(p.Result("t1", 0, b"1"))
    assert client.recv() == p.TaskCompleted("t1", 0, b"1", None, 1)
    wait_until(lambda: status(broker)["nodes"] == [], 3, what="node forgotten")


def test_stop_sends_disconnect_to_nodes(peers: list[Peer]) -> None:
    b = Broker()
    node = Peer(b.endpoint)
    peers.append(node)
    node.register("n1")
    b.stop()
    assert node.recv() == p.Disconnect("broker shutting down")


def test_oversized_result_fails_the_task_with_bad_result(
    small_broker: Broker, peers: list[Peer]
) -> None:
    node, client = new_peer(small_broker, peers), new_peer(small_broker, peers)
    node.register("n1")
    client.send(p.Execute("t1", "f", b"[]"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Result("t1", 0, b'"' + b"x" * 5000 + b'"'))
    refused = node.recv()
    assert isinstance(refused, p.Error) and refused.code == p.ERR_TOO_LARGE
    done = client.recv()
    assert isinstance(done, p.TaskCompleted) and done.exit_code == p.EXIT_BAD_RESULT
    assert done.error is not None and "4096" in done.error.message


def test_resend_after_completion_is_answered_without_running_again(
    broker: Broker, peers: list[Peer]
) -> None:
    node = new_peer(broker, peers)
    node.register("n1")
    client = new_peer(broker, peers)
    client.send(p.Execute("t1", "f", b"[]"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Result("t1", 0, b"7"))
    first = client.recv()
    # A REQ client that lost that reply resends on a fresh socket.
    again = req_roundtrip(broker.endpoint, p.encode(p.Execute("t1", "f", b"[]")))
    assert again == first == p.TaskCompleted("t1", 0, b"7", None, 1)
    counters = status(broker)["counters"]
    assert counters["accepted"] == 1 and counters["answered_again"] == 1
    with pytest.raises(AssertionError, match="no message"):
        node.recv(timeout_ms=300)  # heartbeats only: no second RUN


def test_a_backlog_longer_than_one_batch_is_answered_in_full() -> None:
    """Messages waiting before the loop starts are read BATCH at a time; none is lost at
    the edge of a batch."""
    scheduler = SchedulerConfig(heartbeat_interval=INTERVAL, liveness=LIVENESS)
    server = BrokerServer(BrokerConfig("tcp://127.0.0.1:*", scheduler=scheduler, strict=True))
    peer = Peer(server.bind())
    thread = threading.Thread(target=server.serve, daemon=True)
    count = 3 * BATCH + 7
    try:
        for i in range(count):  # queued in ZeroMQ: the loop has not started yet
            peer.send(p.Execute(f"t{i}", "nobody-offers-this", b"[]"))
        thread.start()
        answered = [peer.recv() for _ in range(count)]
        assert [m.task_id for m in answered if isinstance(m, p.TaskCompleted)] == [
            f"t{i}" for i in range(count)
        ]
        assert not peer.sock.poll(200), "an answer too many"
    finally:
        server.request_stop()
        if thread.is_alive():
            thread.join(5)
        peer.close()
