"""The broker server in-process (strict mode: the core's invariants are checked after every
event) with scripted peers on real sockets."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import zmq

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.server import BATCH, BrokerConfig, BrokerServer
from broker.store import PersistenceConfig
from tests.support import wait_until

INTERVAL = 0.1
LIVENESS = 3
TIMEOUT_MS = 3000
MakeSocket = Callable[[int], zmq.Socket[Any]]


def execute(task_id: str, function: str = "f", args: bytes = b"[]", **options: Any) -> p.Execute:
    return p.Execute(p.TaskSpec(task_id, function, args, **options))


class Broker:
    def __init__(self, **config: Any) -> None:
        scheduler = SchedulerConfig(heartbeat_interval=INTERVAL, liveness=LIVENESS)
        defaults: dict[str, Any] = {
            "scheduler": scheduler,
            "strict": True,
            "persistence": PersistenceConfig(store=None),
        }
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

    def __init__(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        self.sock = sock
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

    def register(
        self, name: str, functions: tuple[str, ...] = ("f",), capacity: int = 1, pid: int = 123
    ) -> None:
        self.send(p.Register(name, "localhost", pid, functions, capacity))
        assert isinstance(self.recv(), p.Registered)


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def small_broker() -> Iterator[Broker]:
    """A broker that refuses messages over 4096 bytes."""
    b = Broker(max_message_size=4096)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def peers(make_socket: MakeSocket) -> Callable[[Broker], Peer]:
    """`peers(broker)`: a new DEALER peer of that broker, closed after the test."""
    return lambda broker: Peer(make_socket(zmq.DEALER), broker.endpoint)


def req_roundtrip(endpoint: str, frames: list[bytes]) -> p.Message:
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        assert sock.poll(TIMEOUT_MS), "no reply from the broker"
        return p.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)


def status(broker: Broker) -> dict[str, Any]:
    reply = req_roundtrip(broker.endpoint, p.encode(p.Status()))
    assert isinstance(reply, p.StatusReply)
    return reply.body


def test_register_execute_run_result_completed(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    node = peers(broker)
    node.send(p.Register("n1", "localhost", 123, ("multiply",), 2))
    registered = node.recv()
    assert registered == p.Registered(registered.node_id, INTERVAL, LIVENESS, 0)  # type: ignore[union-attr]
    client = peers(broker)
    client.send(execute("t1", "multiply", b"[5,10]"))
    run = node.recv()
    assert run == p.Run("t1", "multiply", b"[5,10]", 1)
    node.send(p.Result("t1", 0, b"50", None, 1))
    assert client.recv() == p.TaskCompleted("t1", 0, b"50", None, 1)


def packed_items(message: p.Message) -> tuple[bool, list[Any]]:
    """Whether a Batch came packed, and its tasks."""
    assert isinstance(message, p.Batch), message
    return message.packed, list(message.items)


def test_the_packed_form_goes_to_the_peers_that_read_it(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    """protocol.md 2.5: a node that registered packed gets packed RUNs and may send packed
    RESULTs; a client that sent packed EXECUTEs gets packed answers, one that sent pairs
    gets pairs."""
    node = peers(broker)
    node.send(p.Register("n1", "localhost", 123, ("f",), 8, packed=True))
    registered = node.recv()
    assert isinstance(registered, p.Registered) and registered.packed
    packer, pairer = peers(broker), peers(broker)
    for client, prefix, packed in ((packer, "k", True), (pairer, "q", False)):
        tasks = [execute(f"{prefix}{i}", args=f"[{i}]".encode()) for i in range(4)]
        client.send(p.Batch(tuple(tasks), packed=packed))
        runs_packed, runs = packed_items(node.recv())
        assert runs_packed  # the node asked for it
        assert [r.args for r in runs] == [t.spec.args for t in tasks]
        results = tuple(p.Result(r.task_id, 0, r.args, None, 1) for r in runs)
        node.send(p.Batch(results, packed=True))
        answers_packed, answers = packed_items(client.recv())
        assert answers_packed == packed
        assert [(a.task_id, a.result) for a in answers] == [
            (t.spec.task_id, t.spec.args) for t in tasks
        ]


def test_req_client_gets_unknown_function_error(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    peers(broker).register("n1", ("f",))
    reply = req_roundtrip(broker.endpoint, p.encode(execute("t1", "nope")))
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
    broker: Broker, peers: Callable[[Broker], Peer], frames: list[bytes], code: str
) -> None:
    reply = req_roundtrip(broker.endpoint, frames)
    assert isinstance(reply, p.Error) and reply.code == code, reply
    counters = status(broker)["counters"]
    assert counters[f"refused_{code}"] == 1
    node = peers(broker)
    node.register("n1")  # still serving


def test_missing_delimiter_is_refused(broker: Broker, peers: Callable[[Broker], Peer]) -> None:
    peer = peers(broker)
    peer.send_raw(p.encode(p.Heartbeat()))  # a DEALER that forgot the empty frame
    reply = peer.recv()
    assert isinstance(reply, p.Error) and reply.code == p.ERR_MALFORMED


def test_oversized_message_is_refused_with_its_task_id(small_broker: Broker) -> None:
    big = execute("t-big", "f", b"[" + b"1," * 4000 + b"1]")
    reply = req_roundtrip(small_broker.endpoint, p.encode(big))
    assert isinstance(reply, p.Error)
    assert reply == p.Error(p.ERR_TOO_LARGE, reply.message, "t-big")
    assert "4096" in reply.message


@pytest.mark.parametrize("packed", [False, True])
def test_a_message_of_too_many_tasks_is_refused_whole_and_the_next_is_served(
    broker: Broker, peers: Callable[[Broker], Peer], packed: bool
) -> None:
    """protocol.md 2.4: more than MAX_BATCH_TASKS tasks in one message, pairs or packed,
    is answered with one ERROR too_large, counted; none of them is taken."""
    node = peers(broker)
    node.register("n1")
    client = peers(broker)
    too_many = tuple(execute(f"t{i}") for i in range(p.MAX_BATCH_TASKS + 1))
    client.send(p.Batch(too_many, packed=packed))
    reply = client.recv()
    assert isinstance(reply, p.Error) and (reply.code, reply.task_id) == (p.ERR_TOO_LARGE, None)
    assert f"{p.MAX_BATCH_TASKS + 1} EXECUTE tasks" in reply.message
    state = status(broker)
    assert state["counters"]["refused_too_large"] == 1 and state["counters"].get("accepted", 0) == 0
    client.send(execute("after"))
    assert node.recv() == p.Run("after", "f", b"[]", 1)


def test_silent_node_is_declared_dead_and_its_task_completes_elsewhere(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    doomed = peers(broker)
    doomed.register("doomed")
    client = peers(broker)
    client.send(execute("t1"))
    assert isinstance(doomed.recv(), p.Run)
    rescuer = peers(broker)
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
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    node = peers(broker)
    node.register("n1")
    assert isinstance(node.recv(skip_heartbeats=False), p.Heartbeat)
    stranger = peers(broker)
    stranger.send(p.Heartbeat())
    assert isinstance(stranger.recv(), p.Disconnect)


def test_resend_of_pending_task_runs_once_and_answers_both(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    node = peers(broker)
    node.register("n1")
    first, second = peers(broker), peers(broker)
    first.send(execute("t1"))
    assert isinstance(node.recv(), p.Run)
    second.send(execute("t1"))
    wait_until(lambda: status(broker)["counters"].get("resubmitted") == 1, 3, what="resend")
    node.send(p.Result("t1", 0, b"7"))
    assert first.recv() == second.recv() == p.TaskCompleted("t1", 0, b"7", None, 1)
    assert status(broker)["counters"]["accepted"] == 1


def test_deregister_drains_then_forgets(broker: Broker, peers: Callable[[Broker], Peer]) -> None:
    node = peers(broker)
    node.register("n1")
    client = peers(broker)
    client.send(execute("t1"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Deregister())
    wait_until(lambda: status(broker)["nodes"][0]["state"] == "draining", 3, what="draining")
    node.send(p.Result("t1", 0, b"1"))
    assert client.recv() == p.TaskCompleted("t1", 0, b"1", None, 1)
    wait_until(lambda: status(broker)["nodes"] == [], 3, what="node forgotten")


def test_stop_sends_disconnect_to_nodes(peers: Callable[[Broker], Peer]) -> None:
    b = Broker()
    node = peers(b)
    node.register("n1")
    b.stop()
    assert node.recv() == p.Disconnect("broker shutting down")


def test_oversized_result_fails_the_task_with_bad_result(
    small_broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    node, client = peers(small_broker), peers(small_broker)
    node.register("n1")
    client.send(execute("t1"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Result("t1", 0, b'"' + b"x" * 5000 + b'"'))
    refused = node.recv()
    assert isinstance(refused, p.Error) and refused.code == p.ERR_TOO_LARGE
    done = client.recv()
    assert isinstance(done, p.TaskCompleted) and done.exit_code == p.EXIT_BAD_RESULT
    assert done.error is not None and "4096" in done.error.message


def test_resend_after_completion_is_answered_without_running_again(
    broker: Broker, peers: Callable[[Broker], Peer]
) -> None:
    node = peers(broker)
    node.register("n1")
    client = peers(broker)
    client.send(execute("t1"))
    assert isinstance(node.recv(), p.Run)
    node.send(p.Result("t1", 0, b"7"))
    first = client.recv()
    # A REQ client that lost that reply resends on a fresh socket.
    again = req_roundtrip(broker.endpoint, p.encode(execute("t1")))
    assert again == first == p.TaskCompleted("t1", 0, b"7", None, 1)
    counters = status(broker)["counters"]
    assert counters["accepted"] == 1 and counters["answered_again"] == 1
    with pytest.raises(AssertionError, match="no message"):
        node.recv(timeout_ms=300)  # heartbeats only: no second RUN


def test_a_backlog_longer_than_one_batch_is_answered_in_full(make_socket: MakeSocket) -> None:
    """Messages waiting before the loop starts are read BATCH at a time; none is lost at
    the edge of a batch, and their answers leave in order. (No grace at start: each is
    answered 127 at once.)"""
    scheduler = SchedulerConfig(heartbeat_interval=INTERVAL, liveness=LIVENESS, start_grace=False)
    config = BrokerConfig(
        "tcp://127.0.0.1:*", scheduler, persistence=PersistenceConfig(store=None), strict=True
    )
    server = BrokerServer(config)
    peer = Peer(make_socket(zmq.DEALER), server.bind())
    thread = threading.Thread(target=server.serve, daemon=True)
    count = 3 * BATCH + 7
    try:
        for i in range(count):  # queued in ZeroMQ: the loop has not started yet
            peer.send(execute(f"t{i}", "nobody-offers-this"))
        thread.start()
        answered: list[object] = []
        while len(answered) < count:  # answers to messages read together share messages
            reply = peer.recv()
            answered += reply.items if isinstance(reply, p.Batch) else [reply]
        assert [m.task_id for m in answered if isinstance(m, p.TaskCompleted)] == [
            f"t{i}" for i in range(count)
        ]
        assert not peer.sock.poll(200), "an answer too many"
    finally:
        server.request_stop()
        if thread.is_alive():
            thread.join(5)


def test_only_the_holder_answers_a_task(broker: Broker, peers: Callable[[Broker], Peer]) -> None:
    """A stranger, and a registered node that does not hold the task, are refused; the
    client gets the holder's answer."""
    holder, other = peers(broker), peers(broker)
    holder.register("holder", pid=1)
    client = peers(broker)
    client.send(execute("t1"))
    assert isinstance(holder.recv(), p.Run)
    other.register("other", pid=2)
    stranger = peers(broker)
    stranger.send(p.Result("t1", 0, b'"forged"'))
    assert stranger.recv() == p.Disconnect("not registered: send REGISTER")
    other.send(p.Result("t1", 0, b'"forged"'))
    refused = other.recv()
    assert isinstance(refused, p.Error) and (refused.code, refused.task_id) == ("not_holder", "t1")
    holder.send(p.Result("t1", 0, b"42", None, 1))
    assert client.recv() == p.TaskCompleted("t1", 0, b"42", None, 1)
    assert status(broker)["counters"]["refused_not_holder"] == 2


def test_status_is_answered_between_slices_while_50000_tasks_expire(
    peers: Callable[[Broker], Peer], make_socket: MakeSocket
) -> None:
    """50,000 queued tasks reach their queue deadline together: the broker answers them
    TICK_BUDGET at a time and STATUS requests between two of those slices, so some
    STATUS sees the burst half done. How long a STATUS takes meanwhile is measured by
    `tools/bench.py expiry`, not here."""
    # Not strict: checking every invariant after each of 100,000 events would take minutes.
    b = Broker(scheduler=SchedulerConfig(heartbeat_interval=30.0, liveness=3), strict=False)
    try:
        node, client = peers(b), peers(b)
        node.register("busy")
        client.send(execute("busy"))
        assert isinstance(node.recv(), p.Run)  # its one slot stays taken
        total = 50_000
        client.sock.setsockopt(zmq.RCVHWM, 0)
        specs = [execute(f"t{i}", queue_timeout=2.0) for i in range(total)]
        for start in range(0, total, 256):
            client.send_raw([b"", *p.encode_batch(specs[start : start + 256])])
        wait_until(lambda: status(b)["queued"] == total, 20, what="all tasks queued")
        asker = make_socket(zmq.REQ)
        asker.connect(b.endpoint)
        seen_mid_burst: list[int] = []
        queued = total
        while queued:
            asker.send_multipart(p.encode(p.Status()))
            assert asker.poll(TIMEOUT_MS), "no STATUS_REPLY"
            reply = p.decode(asker.recv_multipart())
            assert isinstance(reply, p.StatusReply)
            queued = reply.body["queued"]
            if 0 < queued < total:
                seen_mid_burst.append(queued)
            while client.sock.poll(0):
                client.sock.recv_multipart()  # answers (exit 125) as they come
        assert seen_mid_burst, "no STATUS was answered while the burst was being handled"
        assert status(b)["counters"]["expired"] == total
        node.send(p.Result("busy", 0, b"null", None, 1))  # so that the broker stops at once
        wait_until(lambda: status(b)["running"] == 0, 5, what="the busy task answered")
    finally:
        b.stop()


def test_a_client_that_does_not_read_costs_its_byte_budget_and_loses_no_answer(
    make_socket: MakeSocket,
) -> None:
    """Answers past a peer's byte budget are dropped and counted, never held without bound;
    the client gets each of them again by resending (they are kept answers)."""
    budget = 1024 * 1024
    broker = Broker(max_queued_bytes_per_peer=budget)
    try:
        node = Peer(make_socket(zmq.DEALER), broker.endpoint)
        node.register("n1", ("f",), capacity=1000)
        sock = make_socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, 1)  # the client takes (almost) nothing
        sock.setsockopt(zmq.RCVBUF, 4096)
        client = Peer(sock, broker.endpoint)
        count, result = 400, orjson.dumps("x" * 65536)
        for i in range(count):
            client.send(execute(f"t{i}", "f", b"[]"))
        runs = 0
        while runs < count:  # each answered alone: one 64 KiB TASK_COMPLETED each
            reply = node.recv()
            for run in reply.items if isinstance(reply, p.Batch) else [reply]:
                assert isinstance(run, p.Run)
                node.send(p.Result(run.task_id, 0, result, None, run.attempt))
                runs += 1
        wait_until(lambda: status(broker)["metrics"]["outbox_dropped"] > 0, 10, what="a drop")
        answer = status(broker)  # one answer: drops may go on between two of them
        metrics = answer["metrics"]
        assert metrics["outbox_most_bytes"] <= budget + len(result) + 1024
        assert answer["counters"]["send_blocked"] == metrics["outbox_dropped"]
        # The client reads now: what was held arrives; what was dropped comes on a resend
        # (as a Lazy Pirate client resends what is unanswered; answers to a burst of
        # resends may be dropped again, so it resends until none is missing).
        answered: set[str] = set()

        def read_for(seconds: float) -> None:
            while sock.poll(int(seconds * 1000)):
                reply = client.recv()
                for done in reply.items if isinstance(reply, p.Batch) else [reply]:
                    assert isinstance(done, p.TaskCompleted) and done.result == result
                    answered.add(done.task_id)

        read_for(0.5)
        missing = [f"t{i}" for i in range(count) if f"t{i}" not in answered]
        assert missing, "nothing was dropped: the test did not fill the budget"
        deadline = time.monotonic() + 30
        while missing and time.monotonic() < deadline:
            for task_id in missing:
                client.send(execute(task_id, "f", b"[]"))
            read_for(0.5)
            missing = [f"t{i}" for i in range(count) if f"t{i}" not in answered]
        assert not missing, f"{len(missing)} answers never came"
        assert status(broker)["counters"]["completed"] == count, "a task ran twice"
        assert status(broker)["metrics"]["outbox_bytes"] == 0
    finally:
        broker.stop()


@pytest.mark.parametrize("register_first", [True, False], ids=["register-first", "result-first"])
def test_a_timeout_is_answered_as_a_timeout_whichever_connection_speaks_first(
    broker: Broker, peers: Callable[[Broker], Peer], register_first: bool
) -> None:
    """A node process that stopped a function at its timeout answers 124 and ends; its
    successor registers with `replaces` on another connection. Both orders of the two
    messages reach the broker here: the client is answered 124 Timeout each time."""
    old = peers(broker)
    old.send(p.Register("n.0", "localhost", 100, ("f",), 1))
    assert isinstance(old.recv(), p.Registered)
    client = peers(broker)
    client.send(execute("t1", "f", b"[]", task_timeout=0.3))
    run = old.recv()
    assert isinstance(run, p.Run)
    error = p.ErrorInfo("Timeout", "f() exceeded its timeout of 0.3 s (attempt 1)")
    timed_out = p.Result("t1", p.EXIT_TIMEOUT, b"null", error, run.attempt)
    new = peers(broker)
    replaces = p.Replaces(100, "stopped after task t1 exceeded its 0.3 s timeout")
    if register_first:
        new.send(p.Register("n.0", "localhost", 101, ("f",), 1, replaces))
        assert isinstance(new.recv(), p.Registered)  # handled before the RESULT is sent
        old.send(timed_out)
    else:
        old.send(timed_out)
        wait_until(lambda: status(broker)["counters"].get("failed", 0) == 1, 5, what="the RESULT")
        new.send(p.Register("n.0", "localhost", 101, ("f",), 1, replaces))
    answer = client.recv()
    assert isinstance(answer, p.TaskCompleted)
    assert (answer.exit_code, answer.error and answer.error.type) == (p.EXIT_TIMEOUT, "Timeout")
    assert not client.sock.poll(3 * int(INTERVAL * 1000)), "answered twice"
