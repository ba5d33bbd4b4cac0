"""A scripted stand-in for the broker, for client tests.

One ROUTER socket on 127.0.0.1 (OS-picked port), owned by a background thread that hands
each request to a handler and sends back whatever replies the handler returns. The handler
runs in that thread, so it may keep state (hold requests, answer them later, drop some).
The broker records every request and the most tasks it ever had unanswered at once.
"""

from __future__ import annotations

import threading
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
    DeadLetters,
    DeadLettersReply,
    Error,
    ErrorInfo,
    Execute,
    Message,
    ProtocolError,
    Status,
    StatusReply,
    TaskCompleted,
    decode,
    dumps_payload,
    encode,
    loads_payload,
)


@dataclass(frozen=True)
class Request:
    identity: bytes  # the ROUTER identity of the client's socket
    message: Message


Reply = tuple[bytes, Message]  # (identity to send to, message)
Handler = Callable[[Request], Iterable[Reply]]

STATUS_BODY: dict[str, Any] = {"nodes": [], "queued": 0, "running": 0, "counters": {}}


def completed(
    request: Request,
    result: Any = None,
    *,
    exit_code: int = 0,
    error: ErrorInfo | None = None,
    task_id: str | None = None,
) -> Reply:
    """A TASK_COMPLETED answering the EXECUTE in `request` (or naming another task_id)."""
    execute = request.message
    assert isinstance(execute, Execute)
    tid = execute.task_id if task_id is None else task_id
    return request.identity, TaskCompleted(tid, exit_code, dumps_payload(result), error)


def serve_functions(functions: dict[str, Callable[..., Any]]) -> Handler:
    """A handler that runs EXECUTEs with `functions` like a node would, and answers STATUS."""

    def handle(request: Request) -> list[Reply]:
        message = request.message
        if isinstance(message, Status):
            return [(request.identity, StatusReply(STATUS_BODY))]
        if not isinstance(message, Execute):
            return []
        function = functions.get(message.function)
        if function is None:
            error = ErrorInfo("UnknownFunction", f"no node offers {message.function!r}")
            return [completed(request, exit_code=127, error=error)]
        try:
            result = function(*loads_payload(message.payload))
        except Exception as exc:
            error = ErrorInfo(type(exc).__name__, str(exc))
            return [completed(request, exit_code=1, error=error)]
        return [completed(request, result)]

    return handle


def drop_first(count: int, then: Handler) -> Handler:
    """Drop the first `count` EXECUTEs unanswered, hand everything after to `then`."""
    dropped: list[Request] = []

    def handle(request: Request) -> list[Reply]:
        if isinstance(request.message, Execute) and len(dropped) < count:
            dropped.append(request)
            return []
        return list(then(request))

    return handle


def ignore_all(request: Request) -> list[Reply]:
    return []


def refuse_all(request: Request) -> list[Reply]:
    assert isinstance(request.message, Execute)
    error = Error("too_large", "message too large", request.message.task_id)
    return [(request.identity, error)]


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
        self.entries = {entry["task_id"]: (entry, payload) for entry, payload in entries}
        self.replayed: list[str] = []
        self._then = then

    def __call__(self, request: Request) -> list[Reply]:
        message = request.message
        if isinstance(message, Status):
            return [(request.identity, StatusReply(STATUS_BODY))]
        if not isinstance(message, DeadLetters):
            return [] if self._then is None else list(self._then(request))
        return [(request.identity, self._answer(message))]

    def _answer(self, request: DeadLetters) -> Message:
        if request.op == DLQ_LIST:
            entries = [entry for entry, _ in self.entries.values()][: request.limit]
            return DeadLettersReply({"dead_letters": entries, "total": len(self.entries)})
        if request.op == DLQ_SHOW:
            assert request.task_id is not None
            if request.task_id not in self.entries:
                text = f"task {request.task_id!r} is not in the dead-letter queue"
                return Error(ERR_NOT_FOUND, text, request.task_id)
            entry, payload = self.entries[request.task_id]
            return DeadLettersReply({"dead_letter": entry}, payload)
        chosen = list(self.entries) if request.task_id is None else [request.task_id]
        found = [task_id for task_id in chosen if self.entries.pop(task_id, None) is not None]
        if request.op == DLQ_PURGE:
            return DeadLettersReply({"purged": len(found)})
        assert request.op == DLQ_REPLAY
        self.replayed += found
        missing = [task_id for task_id in chosen if task_id not in found]
        return DeadLettersReply({"replayed": found, "missing": missing})


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


def dead_letter_requests(broker: FakeBroker) -> list[DeadLetters]:
    return [r.message for r in broker.requests if isinstance(r.message, DeadLetters)]


@contextmanager
def fake_brokers() -> Iterator[Callable[[Handler], FakeBroker]]:
    """`start(handler)` starts a FakeBroker; every one started is closed on the way out."""
    started: list[FakeBroker] = []

    def start(handler: Handler) -> FakeBroker:
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


class FakeBroker:
    """Start with `start()`, always `close()` (joins the thread, closes the socket)."""

    def __init__(self, handler: Handler) -> None:
        self.url = ""
        self.max_in_flight = 0
        self._handler = handler
        self._context: zmq.Context[Any] = zmq.Context()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._in_flight: set[str] = set()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)

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
            raise AssertionError("the fake broker's handler failed") from self._failure

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def executes(self) -> list[tuple[bytes, Execute]]:
        """(identity, EXECUTE) for every EXECUTE received, in arrival order."""
        return [(r.identity, r.message) for r in self.requests if isinstance(r.message, Execute)]

    def _serve(self) -> None:
        sock: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind("tcp://127.0.0.1:*")
            self.url = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._ready.set()
            while not self._stop.is_set():
                if sock.poll(20):
                    self._handle(sock, sock.recv_multipart())
        except BaseException as exc:
            self._failure = exc
        finally:
            sock.close()
            self._ready.set()

    def _handle(self, sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        identity, delimiter, *body = frames
        assert delimiter == b"", f"missing empty delimiter frame in {frames!r}"
        message = decode(body)
        # The pipelined client sends several tasks per EXECUTE: script them one by one.
        for item in message.items if isinstance(message, Batch) else (message,):
            assert not isinstance(item, ProtocolError), f"client sent a bad pair: {item}"
            self._handle_one(sock, Request(identity, item))

    def _handle_one(self, sock: zmq.Socket[Any], request: Request) -> None:
        with self._lock:
            self._requests.append(request)
            if isinstance(request.message, Execute):
                self._in_flight.add(request.message.task_id)
                self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
        for to, reply in self._handler(request):
            if isinstance(reply, (TaskCompleted, Error)) and reply.task_id is not None:
                with self._lock:
                    self._in_flight.discard(reply.task_id)
            sock.send_multipart([to, b"", *encode(reply)])
