"""The one scripted stand-in for the broker, for the tests of clients and nodes.

`FakeBroker` is one ROUTER socket on 127.0.0.1 (a port the OS picks), owned by a background
thread. Every message a peer sends is recorded in `inbox` (a batch one task at a time) and
handed to the `handler`, whose replies the thread sends back; the test thread sends what it
likes with `send`, which the socket thread carries out. `register` answers a node's REGISTER
and from then on heartbeats that node, until `keepalive` is emptied. Handlers for clients
(`serve_functions`, `DeadLetterQueue`, ...) are below.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zmq

from broker.protocol import (
    DLQ_LIST,
    DLQ_PURGE,
    DLQ_REPLAY,
    DLQ_SHOW,
    ERR_NOT_FOUND,
    Batch,
    Dlq,
    DlqReply,
    Error,
    ErrorInfo,
    Execute,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Registered,
    Result,
    Run,
    Status,
    StatusReply,
    TaskCompleted,
    decode,
    dumps_payload,
    encode,
    loads_payload,
)
from client.cluster import Process
from tests.support import wait_until

INTERVAL = 0.2  # the heartbeat interval `register` gives nodes
LIVENESS = 3
KEEPALIVE = 0.1  # how often the fake broker heartbeats the nodes it registered
POLL_MS = 5  # how long the socket thread waits before it looks at the test's sends


@dataclass(frozen=True)
class Received:
    at: float  # monotonic time of arrival
    identity: bytes  # the ROUTER identity of the peer's socket
    message: Message
    shared: int = 1  # how many tasks came in its message (protocol.md 2.4)
    packed: bool = False  # its message was in the packed form (protocol.md 2.5)


Reply = tuple[bytes, Message]  # (identity to send to, message)
Handler = Callable[[Received], Iterable[Reply]]
StartBroker = Callable[[Handler], "FakeBroker"]  # what `fake_brokers()` gives

STATUS_BODY: dict[str, Any] = {"nodes": [], "queued": 0, "running": 0, "counters": {}}


def ignore_all(received: Received) -> list[Reply]:
    return []


class FakeBroker:
    """Start with `start()` (or use `fake_brokers()`); always `close()`."""

    def __init__(self, handler: Handler = ignore_all, alive: Iterable[Process] = ()) -> None:
        self.url = ""
        self.max_in_flight = 0  # the most EXECUTEs it ever had unanswered at once
        self.alive = list(alive)  # a wait fails early when one of these dies
        self.keepalive: set[bytes] = set()  # identities it heartbeats
        self.backlog: int | None = None  # the backlog hint its heartbeats carry
        self._handler = handler
        self._context: zmq.Context[Any] = zmq.Context()
        self._lock = threading.Lock()
        self._inbox: list[Received] = []
        self._log: list[Received] = []  # everything, also what `take` took
        self._in_flight: set[str] = set()
        self._outbox: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)

    # ------------------------------------------------------------------ life

    def start(self) -> FakeBroker:
        self._thread.start()
        if not self._ready.wait(10) or self._failure is not None:
            self.close()
            raise RuntimeError("the fake broker did not start")
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # it was started
            self._thread.join(10)
        self._context.term()
        if self._failure is not None:
            raise AssertionError("the fake broker's thread failed") from self._failure

    def __enter__(self) -> FakeBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def send(self, identity: bytes, message: Message) -> None:
        self.send_raw(identity, b"", *encode(message))

    def send_raw(self, identity: bytes, *frames: bytes) -> None:
        """Frames after the identity, as they are (the empty delimiter is not added)."""
        self._outbox.put([identity, *frames])

    # ------------------------------------------------------------------ what arrived

    @property
    def requests(self) -> list[Received]:
        """Everything received so far, in order of arrival (taken or not)."""
        with self._lock:
            return list(self._log)

    def executes(self) -> list[tuple[bytes, Execute]]:
        """(identity, EXECUTE) for every EXECUTE received, in arrival order."""
        return [(r.identity, r.message) for r in self.requests if isinstance(r.message, Execute)]

    def clear(self) -> None:
        """Forget what arrived and was not taken."""
        with self._lock:
            self._inbox.clear()

    def count(self, kind: type[Any], identity: bytes | None = None) -> int:
        """Messages of `kind` (from `identity`) in the inbox."""
        with self._lock:
            return sum(
                1 for r in self._inbox if type(r.message) is kind and identity in (None, r.identity)
            )

    def take(
        self,
        kind: type[Any],
        timeout: float = 5.0,
        where: Callable[[Received], bool] = lambda r: True,
    ) -> Received:
        """The first message of `kind` matching `where` not taken yet (waits for it)."""

        def find() -> Received | None:
            with self._lock:
                for index, item in enumerate(self._inbox):
                    if type(item.message) is kind and where(item):
                        return self._inbox.pop(index)
            return None

        what = f"{kind.__name__} at the fake broker"
        return wait_until(find, timeout, what=what, alive=self.alive, interval=0.005)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what=what, interval=0.005)

    # ------------------------------------------------------------------ a node's broker

    def register(
        self,
        timeout: float = 15.0,
        name: str | None = None,
        node_id: str | None = None,
        packed: bool = False,
    ) -> tuple[bytes, Register]:
        """Take a REGISTER (from the node called `name`, if given), answer REGISTERED with
        INTERVAL and LIVENESS (and `packed`: RESULTs may come packed), and heartbeat that
        node from then on."""

        def named(r: Received) -> bool:
            return name is None or getattr(r.message, "name", None) == name

        got = self.take(Register, timeout, named)
        assert isinstance(got.message, Register)
        node_id = node_id or f"node-{got.identity.hex()}"
        self.send(got.identity, Registered(node_id, INTERVAL, LIVENESS, packed=packed))
        self.keepalive.add(got.identity)
        return got.identity, got.message

    def run(
        self,
        identity: bytes,
        task_id: str,
        function: str,
        *args: Any,
        task_timeout: float | None = None,
        attempt: int = 1,
    ) -> None:
        """Send a RUN of `function(*args)` to a node."""
        run = Run(task_id, function, dumps_payload(list(args)), attempt, task_timeout)
        self.send(identity, run)

    def result(self, task_id: str, timeout: float = 5.0) -> tuple[bytes, Result]:
        got = self.take(Result, timeout, lambda r: getattr(r.message, "task_id", "") == task_id)
        assert isinstance(got.message, Result)
        return got.identity, got.message

    def call(self, identity: bytes, function: str, *args: Any) -> Result:
        """RUN on a node and wait for its RESULT."""
        task_id = f"t{time.monotonic_ns()}"
        self.run(identity, task_id, function, *args)
        return self.result(task_id)[1]

    # ------------------------------------------------------------------ the socket thread

    def _serve(self) -> None:
        sock: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        last_beat = 0.0
        try:
            sock.bind("tcp://127.0.0.1:*")
            self.url = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._ready.set()
            while not self._stop.is_set():
                while not self._outbox.empty():
                    sock.send_multipart(self._outbox.get())
                now = time.monotonic()
                if self.keepalive and now - last_beat >= KEEPALIVE:
                    beat = encode(Heartbeat(self.backlog))
                    for identity in list(self.keepalive):
                        sock.send_multipart([identity, b"", *beat])
                    last_beat = now
                if sock.poll(POLL_MS):
                    self._handle(sock, sock.recv_multipart())
        except BaseException as exc:
            self._failure = exc
        finally:
            sock.close()
            self._ready.set()

    def _handle(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        identity, delimiter, *body = frames
        assert delimiter == b"", f"a peer sent no empty delimiter frame: {frames!r}"
        try:
            message = decode(body)
        except ProtocolError as exc:
            raise AssertionError(f"a peer sent an undecodable message: {exc.message}") from None
        now = time.monotonic()
        # Several tasks may share a message: they are recorded and handled one by one.
        packed = isinstance(message, Batch) and message.packed
        items = message.items if isinstance(message, Batch) else (message,)
        for item in items:
            assert not isinstance(item, ProtocolError), f"a peer sent a bad pair: {item}"
            self._handle_one(sock, Received(now, identity, item, len(items), packed))

    def _handle_one(self, sock: zmq.Socket[Any], received: Received) -> None:
        with self._lock:
            self._inbox.append(received)
            self._log.append(received)
            if isinstance(received.message, Execute):
                self._in_flight.add(received.message.spec.task_id)
                self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
        for to, reply in self._handler(received):
            if isinstance(reply, (TaskCompleted, Error)) and reply.task_id is not None:
                with self._lock:
                    self._in_flight.discard(reply.task_id)
            sock.send_multipart([to, b"", *encode(reply)])


@contextmanager
def fake_brokers() -> Iterator[Callable[[Handler], FakeBroker]]:
    """`start(handler)` starts a FakeBroker; every one started is closed on the way out."""
    started: list[FakeBroker] = []

    def start(handler: Handler = ignore_all) -> FakeBroker:
        broker = FakeBroker(handler).start()
        started.append(broker)
        return broker

    try:
        yield start
    finally:
        failures: list[AssertionError] = []
        for broker in started:
            try:
                broker.close()
            except AssertionError as exc:  # close the others all the same
                failures.append(exc)
        if failures:
            raise failures[0]


# ---------------------------------------------------------------------- client handlers


def completed(
    received: Received,
    result: Any = None,
    *,
    exit_code: int = 0,
    error: ErrorInfo | None = None,
    task_id: str | None = None,
) -> Reply:
    """A TASK_COMPLETED answering the EXECUTE in `received` (or naming another task_id)."""
    execute = received.message
    assert isinstance(execute, Execute)
    tid = execute.spec.task_id if task_id is None else task_id
    return received.identity, TaskCompleted(tid, exit_code, dumps_payload(result), error)


def serve_functions(functions: dict[str, Callable[..., Any]]) -> Handler:
    """A handler that runs EXECUTEs with `functions` like a node would, and answers STATUS."""

    def handle(received: Received) -> list[Reply]:
        message = received.message
        if isinstance(message, Status):
            return [(received.identity, StatusReply(STATUS_BODY))]
        if not isinstance(message, Execute):
            return []
        function = functions.get(message.spec.function)
        if function is None:
            error = ErrorInfo("UnknownFunction", f"no node offers {message.spec.function!r}")
            return [completed(received, exit_code=127, error=error)]
        try:
            result = function(*loads_payload(message.spec.args))
        except Exception as exc:
            error = ErrorInfo(type(exc).__name__, str(exc))
            return [completed(received, exit_code=1, error=error)]
        return [completed(received, result)]

    return handle


def before_packing(then: Handler) -> Handler:
    """A broker older than protocol.md 2.5 (document 1.17): a packed EXECUTE is refused
    whole, as such a broker reads its headers frame (ERROR malformed, no task id); the
    rest goes to `then`."""

    def handle(received: Received) -> list[Reply]:
        if received.packed:
            return [(received.identity, Error("malformed", "header frame must be a JSON object"))]
        return list(then(received))

    return handle


def drop_first(count: int, then: Handler) -> Handler:
    """Drop the first `count` EXECUTEs unanswered, hand everything after to `then`."""
    dropped: list[Received] = []

    def handle(received: Received) -> list[Reply]:
        if isinstance(received.message, Execute) and len(dropped) < count:
            dropped.append(received)
            return []
        return list(then(received))

    return handle


def refuse_all(received: Received) -> list[Reply]:
    assert isinstance(received.message, Execute)
    error = Error("too_large", "message too large", received.message.spec.task_id)
    return [(received.identity, error)]


def dead_letter(
    task_id: str,
    function: str = "divide",
    *,
    exit_code: int = 1,
    error: tuple[str, str] | None = ("ZeroDivisionError", "division by zero"),
    attempts: int = 4,
    failed_at: float = 1_795_363_200.5,
) -> dict[str, Any]:
    """An entry as DLQ_REPLY carries it (protocol.md 3.13)."""
    return {
        "task_id": task_id,
        "function": function,
        "priority": 5,
        "retries": attempts - 1,
        "attempts": attempts,
        "exit_code": exit_code,
        "error": None if error is None else {"type": error[0], "message": error[1]},
        "failed_at": failed_at,
    }


class DeadLetterQueue:
    """A handler that answers DLQ like the broker (protocol.md 3.12, 3.13) from a scripted
    queue; STATUS is answered too, anything else is handed to `then` (if given).

    `entries` are (entry, arguments frame), newest first. Replayed and purged tasks leave
    the queue; `replayed` records the ids replayed, in order."""

    def __init__(
        self, entries: Iterable[tuple[dict[str, Any], bytes]], then: Handler | None = None
    ) -> None:
        self.entries = {entry["task_id"]: (entry, args) for entry, args in entries}
        self.replayed: list[str] = []
        self._then = then

    def __call__(self, received: Received) -> list[Reply]:
        message = received.message
        if isinstance(message, Status):
            return [(received.identity, StatusReply(STATUS_BODY))]
        if not isinstance(message, Dlq):
            return [] if self._then is None else list(self._then(received))
        return [(received.identity, self._answer(message))]

    def _answer(self, request: Dlq) -> Message:
        if request.op == DLQ_LIST:
            entries = [entry for entry, _ in self.entries.values()][: request.limit]
            return DlqReply({"dead_letters": entries, "total": len(self.entries)})
        if request.op == DLQ_SHOW:
            assert request.task_id is not None
            if request.task_id not in self.entries:
                text = f"task {request.task_id!r} is not in the dead-letter queue"
                return Error(ERR_NOT_FOUND, text, request.task_id)
            entry, args = self.entries[request.task_id]
            return DlqReply({"dead_letter": entry}, args)
        chosen = list(self.entries) if request.task_id is None else [request.task_id]
        found = [task_id for task_id in chosen if self.entries.pop(task_id, None) is not None]
        if request.op == DLQ_PURGE:
            return DlqReply({"purged": len(found)})
        assert request.op == DLQ_REPLAY
        self.replayed += found
        missing = [task_id for task_id in chosen if task_id not in found]
        return DlqReply({"replayed": found, "missing": missing})


def dead_letter_requests(broker: FakeBroker) -> list[Dlq]:
    return [r.message for r in broker.requests if isinstance(r.message, Dlq)]


def unused_endpoint() -> str:
    """An endpoint nobody listens on: bound once by the OS, then released."""
    context: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close()
    context.term()
    return endpoint
