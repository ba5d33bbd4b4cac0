"""A broker restarted on its address is noticed by the client at once (issue 17): each of
its sockets (the REQ of `execute`, the DEALER of the futures, the DEALER of `imap`) watches
its connection for its whole life (client/link.py Reconnects), and when it is lost and made
again every request in flight is sent again at once, not after `resend_interval`.

The broker here is a bare ROUTER in the test's thread, closed while the client waits (its
connection drops, as when the broker is killed) and bound again on the same endpoint; the
client runs in a thread of its own. The resend interval is 10 s, so only a resend on the
reconnection can meet the bound: the time from the second bind to the last resent EXECUTE
under 0.5 s (ZeroMQ tries to connect again every 100 to 200 ms, and the client looks
every 50 ms).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker.protocol import (
    Batch,
    Execute,
    TaskCompleted,
    TaskSpec,
    decode,
    dumps_payload,
    encode,
    loads_payload,
)
from broker.security import load_pair, new_pair
from client import Client
from client.link import LOOK_INTERVAL, Reconnects, deliver
from tests.support import wait_until

RESEND_INTERVAL = 10.0  # far beyond the bound: a resend on silence cannot meet it
BOUND = 0.5  # seconds from the broker listening again to every task resent (issue 17)
WAIT = 5.0  # seconds any one step of a test may take
ARGS = [(6, 7), (2, 3), (4, 5)]
HANDSHAKE = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)

Prepare = Callable[[zmq.Socket[Any]], None]
# bind(prepare=None): a ROUTER bound (again) on the test's endpoint; `prepare` sees it before
Router = Callable[..., zmq.Socket[Any]]


def _multiply(a: int, b: int) -> int:
    return a * b


# ---------------------------------------------------------------------- the three paths


def _execute(client: Client) -> list[Any]:
    return [client.execute("multiply", *ARGS[0])]


def _submit(client: Client) -> list[Any]:
    futures = [client.submit("multiply", *args) for args in ARGS]
    return [future.result(WAIT) for future in futures]


def _imap(client: Client) -> list[Any]:
    return list(client.imap("multiply", ARGS, window=10))


PATHS: dict[str, Callable[[Client], list[Any]]] = {
    "execute": _execute,
    "submit": _submit,
    "imap": _imap,
}


# ---------------------------------------------------------------------- the broker's side


def _executes(router: zmq.Socket[Any], want: int, deadline: float) -> list[tuple[bytes, Execute]]:
    """(identity, EXECUTE) as they arrive at `router` (a batch one task at a time) until
    `want` task ids have come; fails at `deadline`."""
    got: list[tuple[bytes, Execute]] = []
    while len({execute.spec.task_id for _, execute in got}) < want:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(got)} EXECUTEs arrived, of {want} tasks"
        if not router.poll(max(1, int(left * 1000))):
            continue
        identity, delimiter, *body = router.recv_multipart()
        assert delimiter == b""
        message = decode(body)
        for item in message.items if isinstance(message, Batch) else (message,):
            if isinstance(item, Execute):
                got.append((identity, item))
    return got


def _answer(router: zmq.Socket[Any], executes: list[tuple[bytes, Execute]]) -> None:
    for identity, execute in executes:
        result = _multiply(*loads_payload(execute.spec.args))
        completed = TaskCompleted(execute.spec.task_id, 0, dumps_payload(result), None)
        router.send_multipart([identity, b"", *encode(completed)])


@pytest.fixture
def endpoint_router(
    context: zmq.Context[Any], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Router, dict[str, Any]]]:
    """`bind(prepare=None)`: a ROUTER on the test's endpoint (the first on a port the OS
    picks, the next on the same one), with CURVE when the test is parametrized so, handed
    to `prepare` before it binds; and the Client's options that reach it. Every ROUTER is
    closed after the test."""
    curve = getattr(request, "param", "") == "curve"
    options: dict[str, Any] = {"resend_interval": RESEND_INTERVAL, "timeout": WAIT}
    secret = b""
    if curve:
        broker_key, broker_pub = new_pair(tmp_path, "broker")
        client_key, _ = new_pair(tmp_path, "client")
        secret = load_pair(broker_key)[1]
        options.update(curve=client_key, broker_key=broker_pub)
    made: list[zmq.Socket[Any]] = []
    endpoint = "tcp://127.0.0.1:*"

    def bind(prepare: Prepare | None = None) -> zmq.Socket[Any]:
        nonlocal endpoint
        deadline = time.monotonic() + WAIT
        while True:
            router: zmq.Socket[Any] = context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            made.append(router)
            if curve:
                router.curve_server = True
                router.curve_secretkey = secret
            if prepare is not None:
                prepare(router)
            try:
                router.bind(endpoint)
            except zmq.ZMQError as exc:  # the port the last one left is not free yet
                router.close()
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
                continue
            endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            options["url"] = endpoint
            return router

    try:
        yield bind, options
    finally:
        for router in made:
            router.close(linger=0)


def _in_thread(
    options: dict[str, Any], call: Callable[[Client], list[Any]], warm: Callable[[Client], Any]
) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `warm`, then `call`, on a Client of the thread's own; the outcome lands in the
    dict ("results" or "error")."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with Client(**options) as client:
                warm(client)
                out["results"] = call(client)
        except BaseException as exc:  # reported by the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("endpoint_router", "reached_first"),
    [("", False), ("", True), ("curve", False)],
    ids=["first-contact", "reached-before", "curve"],
    indirect=["endpoint_router"],
)
def test_a_broker_back_on_its_address_gets_every_request_again_at_once(
    endpoint_router: tuple[Router, dict[str, Any]], path: str, reached_first: bool
) -> None:
    """The client sends its tasks; the broker receives them, answers none and goes (its
    ROUTER closed); another is bound on the same endpoint. Measured: from that bind to the
    arrival there of the EXECUTE of every task still unanswered, each exactly once.
    `reached_first`: an answered call comes first, so the sockets of the call measured are
    opened once the broker was reached (their monitor from the start), or, for `execute`,
    the REQ socket's ConnectWatch has handed over to its Reconnects."""
    bind, options = endpoint_router
    first = bind()
    want = 1 if path == "execute" else len(ARGS)

    def warm(client: Client) -> None:
        if reached_first:
            assert client.execute("multiply", 1, 1) == 1

    thread, out = _in_thread(options, PATHS[path], warm)
    deadline = time.monotonic() + WAIT
    if reached_first:
        _answer(first, _executes(first, 1, deadline))
    before = _executes(first, want, deadline)
    first.close(linger=0)  # the broker goes: the client's connection drops
    second = bind()
    listening = time.monotonic()
    again = _executes(second, want, listening + WAIT)
    resent = time.monotonic()
    _answer(second, again)
    thread.join(WAIT)
    assert not thread.is_alive(), "the client never finished"
    assert "error" not in out, out["error"]
    assert out["results"] == [_multiply(*args) for args in ARGS[:want]]
    ids = sorted(execute.spec.task_id for _, execute in before)
    assert len(ids) == want, "a task was resent before the broker went"
    assert sorted(execute.spec.task_id for _, execute in again) == ids, "not each once"
    assert resent - listening < BOUND, (
        f"the tasks came again {resent - listening:.3f} s after the broker listened again"
    )


def test_a_reconnection_while_idle_costs_no_resend(
    endpoint_router: tuple[Router, dict[str, Any]],
) -> None:
    """The broker goes and comes back while the client sends nothing; the client's next
    request goes once, on the connection made again, though its answer takes long enough
    (4 LOOK_INTERVALs) for the client to look at its connection meanwhile."""
    bind, options = endpoint_router
    first = bind()
    answered, go = threading.Event(), threading.Event()

    def calls(client: Client) -> list[Any]:
        results = [client.execute("multiply", *ARGS[0])]
        answered.set()
        assert go.wait(WAIT), "the test never said go"
        return [*results, client.execute("multiply", *ARGS[1])]

    thread, out = _in_thread(options, calls, lambda client: None)
    monitors: list[zmq.Socket[Any]] = []
    try:
        _answer(first, _executes(first, 1, time.monotonic() + WAIT))
        # Closed at once (linger 0), the ROUTER could drop the answer still in its queue:
        # the client would then resend the first request, which is not what is tested.
        assert answered.wait(WAIT), "the first answer never reached the client"
        first.close(linger=0)
        second = bind(lambda router: monitors.append(router.get_monitor_socket(HANDSHAKE)))
        assert monitors[-1].poll(int(WAIT * 1000)), "the client did not connect again"
        go.set()
        request = _executes(second, 1, time.monotonic() + WAIT)
        assert not second.poll(int(4 * LOOK_INTERVAL * 1000)), "the request came again"
        _answer(second, request)
        thread.join(WAIT)
    finally:
        go.set()
        for monitor in monitors:
            monitor.close(linger=0)
    assert not thread.is_alive(), "the client never finished"
    assert "error" not in out, out["error"]
    assert out["results"] == [_multiply(*args) for args in ARGS[:2]]


def test_reconnects_tells_a_lost_and_made_connection_once(
    endpoint_router: tuple[Router, dict[str, Any]], make_socket: Callable[[int], zmq.Socket[Any]]
) -> None:
    """The first handshake is no reconnection; a drop and a handshake after it is one,
    told once."""
    bind, options = endpoint_router
    router = bind()
    dealer = make_socket(zmq.DEALER)
    reconnects = Reconnects(dealer)
    try:
        dealer.connect(options["url"])
        dealer.send(b"ping")  # the ROUTER seeing it: the handshake is done
        assert router.poll(int(WAIT * 1000))
        router.recv_multipart()
        assert not reconnects.reconnected()
        router.close(linger=0)
        bind()
        wait_until(reconnects.reconnected, WAIT, what="the reconnection told")
        assert not reconnects.reconnected(), "told twice"
    finally:
        reconnects.close()
        reconnects.close()  # twice is safe


def test_zsubmit_detach_sends_again_at_once_too(
    endpoint_router: tuple[Router, dict[str, Any]],
) -> None:
    """`zsubmit --detach` (client.link.deliver) waits only until the broker holds the task;
    a broker that goes meanwhile gets its EXECUTE again as soon as it listens again."""
    bind, options = endpoint_router
    first = bind()
    spec = TaskSpec("detached-1", "multiply", dumps_payload(list(ARGS[0])))
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["answer"] = deliver(
                options["url"],
                encode(Execute(spec)),
                spec.task_id,
                WAIT,
                resend_interval=RESEND_INTERVAL,
            )
        except BaseException as exc:  # reported by the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _executes(first, 1, time.monotonic() + WAIT)
    first.close(linger=0)
    second = bind()
    listening = time.monotonic()
    again = _executes(second, 1, listening + WAIT)
    resent = time.monotonic()
    _answer(second, again)
    thread.join(WAIT)
    assert not thread.is_alive() and "error" not in out, out
    assert out["answer"].result == dumps_payload(_multiply(*ARGS[0]))
    assert resent - listening < BOUND, f"sent again {resent - listening:.3f} s after listening"
