"""The ZTB/1 wire codec: every frame the broker, nodes and clients exchange.

protocol.md is the document for this module; the two change together. Frames here start
at the protocol tag: the empty delimiter frame before it belongs to the socket layer (a REQ
socket adds and strips it itself, DEALER peers send it explicitly).

Task arguments and results are opaque payload frames to the broker. Only nodes and clients
encode and decode them, with `dumps_payload` / `loads_payload`, which keep integers of any
size exact (orjson alone refuses or rounds those beyond 64 bits).

Imports only the standard library and orjson.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import orjson

from broker.payload import dumps_payload as dumps_payload
from broker.payload import loads_payload as loads_payload

PROTOCOL_NAME = b"ZTB"
VERSION = 1
TAG = PROTOCOL_NAME + str(VERSION).encode()

DEFAULT_BROKER_URL = "tcp://127.0.0.1:5000"
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds
DEFAULT_LIVENESS = 3  # missed intervals before a peer is declared dead
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # bytes, all frames of one message
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
MAX_NAME_LENGTH = 256  # task ids, function names, node names
MAX_RETRIES = 100  # extra attempts a task may ask for
MAX_TIMEOUT_MS = 7 * 86_400_000  # the longest execution timeout a task may ask for

# Exit codes carried by RESULT and TASK_COMPLETED (see protocol.md, "Error model").
EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_RESULT = 3
EXIT_BAD_REQUEST = 64
EXIT_NODE_LOST = 69
EXIT_WORKER_CRASHED = 70
EXIT_TIMEOUT = 124
EXIT_EXPIRED = 125
EXIT_UNKNOWN_FUNCTION = 127

# Command frames.
REGISTER = b"REGISTER"
REGISTERED = b"REGISTERED"
DEREGISTER = b"DEREGISTER"
HEARTBEAT = b"HEARTBEAT"
DISCONNECT = b"DISCONNECT"
EXECUTE = b"EXECUTE"
RUN = b"RUN"
RESULT = b"RESULT"
TASK_COMPLETED = b"TASK_COMPLETED"
STATUS = b"STATUS"
STATUS_REPLY = b"STATUS_REPLY"
DLQ = b"DLQ"
DLQ_REPLY = b"DLQ_REPLY"
ERROR = b"ERROR"

# DLQ operations.
DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE = "list", "show", "replay", "purge"
DLQ_OPS = (DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE)

# ERROR codes.
ERR_MALFORMED = "malformed"
ERR_UNSUPPORTED_VERSION = "unsupported_version"
ERR_UNKNOWN_COMMAND = "unknown_command"
ERR_TOO_LARGE = "too_large"
ERR_NOT_REGISTERED = "not_registered"
ERR_NOT_FOUND = "not_found"


class ProtocolError(Exception):
    """A message that does not follow protocol.md. The only exception decoders raise."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True, slots=True)
class Replaces:
    """The earlier process of a node that a restarted process stands in for."""

    pid: int
    reason: str  # how it ended, for the error its tasks get


@dataclass(frozen=True, slots=True)
class Register:
    name: str
    host: str
    pid: int
    functions: tuple[str, ...]
    capacity: int
    replaces: Replaces | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    node_id: str
    heartbeat_interval: float  # seconds; milliseconds on the wire
    liveness: int


@dataclass(frozen=True, slots=True)
class Deregister:
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: str


@dataclass(frozen=True, slots=True)
class Execute:
    task_id: str
    function: str
    payload: bytes  # JSON array of arguments, never decoded by the broker
    priority: int = PRIORITY_DEFAULT
    retries: int | None = None  # extra attempts after failures; None: the broker's default
    queue_timeout: float | None = None  # seconds it may wait to start; ms on the wire
    timeout: float | None = None  # seconds one attempt may run; ms on the wire


@dataclass(frozen=True, slots=True)
class Run:
    task_id: str
    function: str
    payload: bytes
    attempt: int = 1
    timeout: float | None = None  # seconds this attempt may run; ms on the wire


@dataclass(frozen=True, slots=True)
class Result:
    task_id: str
    exit_code: int
    payload: bytes = b"null"  # JSON result, never decoded by the broker
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class TaskCompleted:
    task_id: str
    exit_code: int
    payload: bytes = b"null"
    error: ErrorInfo | None = None
    attempts: int = 1


TaskMessage: TypeAlias = Execute | Run | Result | TaskCompleted


@dataclass(frozen=True, slots=True)
class Batch:
    """Several tasks in one EXECUTE, RUN, RESULT or TASK_COMPLETED message (protocol.md 2.1).

    Each pair of frames is decoded on its own: a pair that does not decode is a
    ProtocolError in `items`, and the others still count."""

    items: tuple[TaskMessage | ProtocolError, ...]


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class StatusReply:
    body: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """A request about the dead-letter queue: list, show, replay or purge."""

    op: str
    task_id: str | None = None  # show: required; replay/purge: one task, None for all
    limit: int | None = None  # list: at most this many, newest first


@dataclass(frozen=True, slots=True)
class DeadLettersReply:
    body: dict[str, Any] = field(hash=False)
    payload: bytes | None = None  # show: the task's arguments, as it was submitted


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    task_id: str | None = None


Message: TypeAlias = (
    Register
    | Registered
    | Deregister
    | Heartbeat
    | Disconnect
    | Execute
    | Run
    | Result
    | TaskCompleted
    | Status
    | StatusReply
    | DeadLetters
    | DeadLettersReply
    | Error
    | Batch
)


# ---------------------------------------------------------------------------------- encoding


def _json(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def _error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    return None if error is None else error.to_json()


def encode(msg: Message) -> list[bytes]:
    """Frames for `msg`, starting at the protocol tag."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise TypeError(f"not a protocol message: {msg!r}")
    return encoder(msg)


def _encode_register(m: Any) -> list[bytes]:
    body = {
        "name": m.name,
        "host": m.host,
        "pid": m.pid,
        "functions": list(m.functions),
        "capacity": m.capacity,
    }
    if m.replaces is not None:
        body["replaces"] = {"pid": m.replaces.pid, "reason": m.replaces.reason}
    return [TAG, REGISTER, _json(body)]


def _encode_registered(m: Any) -> list[bytes]:
    interval_ms = round(m.heartbeat_interval * 1000)
    body = {"node_id": m.node_id, "heartbeat_interval_ms": interval_ms, "liveness": m.liveness}
    return [TAG, REGISTERED, _json(body)]


def _encode_execute(m: Any) -> list[bytes]:
    header = {"task_id": m.task_id, "function": m.function, "priority": m.priority}
    if m.retries is not None:
        header["retries"] = m.retries
    if m.queue_timeout is not None:
        header["queue_timeout_ms"] = round(m.queue_timeout * 1000)
    if m.timeout is not None:
        header["timeout_ms"] = round(m.timeout * 1000)
    return [TAG, EXECUTE, _json(header), m.payload]


def _encode_run(m: Any) -> list[bytes]:
    header = {"task_id": m.task_id, "function": m.function, "attempt": m.attempt}
    if m.timeout is not None:
        header["timeout_ms"] = round(m.timeout * 1000)
    return [TAG, RUN, _json(header), m.payload]


def _encode_result(m: Any) -> list[bytes]:
    header = {"task_id": m.task_id, "exit_code": m.exit_code, "error": _error_json(m.error)}
    return [TAG, RESULT, _json(header), m.payload]


def _encode_task_completed(m: Any) -> list[bytes]:
    header = {
        "task_id": m.task_id,
        "exit_code": m.exit_code,
        "error": _error_json(m.error),
        "attempts": m.attempts,
    }
    return [TAG, TASK_COMPLETED, _json(header), m.payload]


def _encode_dead_letters(m: Any) -> list[bytes]:
    body: dict[str, Any] = {"op": m.op}
    if m.task_id is not None:
        body["task_id"] = m.task_id
    if m.limit is not None:
        body["limit"] = m.limit
    return [TAG, DLQ, _json(body)]


def _encode_dead_letters_reply(m: Any) -> list[bytes]:
    frames = [TAG, DLQ_REPLY, _json(m.body)]
    return frames if m.payload is None else [*frames, m.payload]


def _encode_error(m: Any) -> list[bytes]:
    body = {"code": m.code, "message": m.message, "task_id": m.task_id}
    return [TAG, ERROR, _json(body)]


BATCH_MAX_TASKS = 256  # tasks per message the reference peers put in one batch (section 2.4)
BATCH_MAX_BYTES = 1024 * 1024  # payload bytes per batch; a larger single task travels alone

T = TypeVar("T")


def batches(
    items: Iterable[T],
    payload_size: Callable[[T], int],
    max_items: int = BATCH_MAX_TASKS,
    max_bytes: int = BATCH_MAX_BYTES,
) -> Iterator[list[T]]:
    """Consecutive `items` grouped into batches within the task and payload-byte caps."""
    batch: list[T] = []
    size = 0
    for item in items:
        n = payload_size(item)
        if batch and (len(batch) >= max_items or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch


def encode_batch(messages: Sequence[TaskMessage]) -> list[bytes]:
    """One message carrying several tasks of the same command: [tag, command, h1, p1, h2, p2...]."""
    frames = encode(messages[0])
    kind = type(messages[0])
    for message in messages[1:]:
        if type(message) is not kind:
            raise TypeError(f"a batch holds one command; got {kind.__name__} and {message!r}")
        frames += encode(message)[2:4]
    return frames


_ENCODERS: dict[type, Callable[[Any], list[bytes]]] = {
    Register: _encode_register,
    Registered: _encode_registered,
    Deregister: lambda m: [TAG, DEREGISTER],
    Heartbeat: lambda m: [TAG, HEARTBEAT],
    Disconnect: lambda m: [TAG, DISCONNECT, _json({"reason": m.reason})],
    Execute: _encode_execute,
    Run: _encode_run,
    Result: _encode_result,
    TaskCompleted: _encode_task_completed,
    Status: lambda m: [TAG, STATUS],
    StatusReply: lambda m: [TAG, STATUS_REPLY, _json(m.body)],
    DeadLetters: _encode_dead_letters,
    DeadLettersReply: _encode_dead_letters_reply,
    Error: _encode_error,
    Batch: lambda m: encode_batch(_messages_of(m)),
}


def _messages_of(batch: Batch) -> list[TaskMessage]:
    items = [item for item in batch.items if not isinstance(item, ProtocolError)]
    if len(items) != len(batch.items) or not items:
        raise TypeError("only a non-empty Batch of messages (no errors) can be encoded")
    return items


# ---------------------------------------------------------------------------------- decoding


def decode(frames: Sequence[bytes]) -> Message:
    """The message in `frames` (starting at the protocol tag). Raises only ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError(ERR_MALFORMED, f"expected at least 2 frames, got {len(frames)}")
    tag = frames[0]
    if tag != TAG:
        _refuse_tag(tag)
    decoder = _DECODERS.get(frames[1])
    if decoder is None:
        name = frames[1][:32].decode("ascii", "replace")
        raise ProtocolError(ERR_UNKNOWN_COMMAND, f"unknown command {name!r}")
    return decoder(frames)


def _refuse_tag(tag: bytes) -> None:
    if tag.startswith(PROTOCOL_NAME) and tag[len(PROTOCOL_NAME) :].isdigit():
        theirs = tag[len(PROTOCOL_NAME) :].decode()
        raise ProtocolError(
            ERR_UNSUPPORTED_VERSION,
            f"protocol version {theirs} is not supported; this broker speaks version {VERSION}",
        )
    raise ProtocolError(ERR_MALFORMED, f"first frame must be {TAG.decode()!r}, got {tag[:16]!r}")


def _frame(frames: Sequence[bytes], index: int, what: str) -> bytes:
    if len(frames) <= index:
        command = frames[1].decode("ascii", "replace")
        raise ProtocolError(ERR_MALFORMED, f"{command} needs a frame: {what}")
    return frames[index]


def _object(frames: Sequence[bytes], index: int, what: str) -> dict[str, Any]:
    raw = _frame(frames, index, what)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ERR_MALFORMED, f"{what} frame is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ERR_MALFORMED, f"{what} frame must be a JSON object")
    return body


def _name(body: dict[str, Any], key: str, task_id: str | None = None) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise ProtocolError(
            ERR_MALFORMED, f"{key!r} must be a string of 1 to {MAX_NAME_LENGTH} characters", task_id
        )
    return value


def _int(
    body: dict[str, Any],
    key: str,
    low: int,
    high: int,
    default: int | None = None,
    *,
    tid: Any = None,
) -> int:
    value = body.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(ERR_MALFORMED, f"{key!r} must be an integer from {low} to {high}", tid)
    return value


def _error_info(body: dict[str, Any], task_id: str) -> ErrorInfo | None:
    error = body.get("error")
    if error is None:
        return None
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("type"), str)
        or not isinstance(error.get("message"), str)
    ):
        raise ProtocolError(ERR_MALFORMED, "'error' must be null or {type, message}", task_id)
    return ErrorInfo(error["type"], error["message"])


def _decode_register(frames: Sequence[bytes]) -> Register:
    body = _object(frames, 2, "body")
    functions = body.get("functions")
    if (
        not isinstance(functions, list)
        or not functions
        or not all(isinstance(f, str) and 0 < len(f) <= MAX_NAME_LENGTH for f in functions)
    ):
        raise ProtocolError(ERR_MALFORMED, "'functions' must be a non-empty list of names")
    host = body.get("host", "")
    if not isinstance(host, str):
        raise ProtocolError(ERR_MALFORMED, "'host' must be a string")
    return Register(
        name=_name(body, "name"),
        host=host[:MAX_NAME_LENGTH],
        pid=_int(body, "pid", 0, 2**63 - 1, 0),
        functions=tuple(dict.fromkeys(functions)),
        capacity=_int(body, "capacity", 1, 1_000_000),
        replaces=_replaces(body.get("replaces")),
    )


def _replaces(value: Any) -> Replaces | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("reason", ""), str):
        raise ProtocolError(ERR_MALFORMED, "'replaces' must be null or {pid, reason}")
    return Replaces(_int(value, "pid", 1, 2**63 - 1), value.get("reason", "")[:1024])


def _decode_registered(frames: Sequence[bytes]) -> Registered:
    body = _object(frames, 2, "body")
    interval_ms = _int(body, "heartbeat_interval_ms", 1, 86_400_000)
    return Registered(
        node_id=_name(body, "node_id"),
        heartbeat_interval=interval_ms / 1000,
        liveness=_int(body, "liveness", 1, 1000),
    )


def _decode_disconnect(frames: Sequence[bytes]) -> Disconnect:
    reason = _object(frames, 2, "body").get("reason", "")
    return Disconnect(reason if isinstance(reason, str) else "")


def _decode_execute(frames: Sequence[bytes]) -> Execute:
    header = _object(frames, 2, "header")
    task_id = _name(header, "task_id")
    function = _name(header, "function", task_id)
    priority = _int(header, "priority", PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT, tid=task_id)
    retries = queue_timeout = None
    if header.get("retries") is not None:
        retries = _int(header, "retries", 0, MAX_RETRIES, tid=task_id)
    if header.get("queue_timeout_ms") is not None:
        queue_timeout = _int(header, "queue_timeout_ms", 1, 86_400_000, tid=task_id) / 1000
    timeout = _timeout(header, task_id)
    payload = _frame(frames, 3, "arguments")
    return Execute(task_id, function, payload, priority, retries, queue_timeout, timeout)


def _timeout(header: dict[str, Any], task_id: str) -> float | None:
    if header.get("timeout_ms") is None:
        return None
    return _int(header, "timeout_ms", 1, MAX_TIMEOUT_MS, tid=task_id) / 1000


def _decode_run(frames: Sequence[bytes]) -> Run:
    header = _object(frames, 2, "header")
    task_id = _name(header, "task_id")
    function = _name(header, "function", task_id)
    attempt = _int(header, "attempt", 1, 1_000_000, 1, tid=task_id)
    timeout = _timeout(header, task_id)
    return Run(task_id, function, _frame(frames, 3, "arguments"), attempt, timeout)


def _decode_result(frames: Sequence[bytes]) -> Result:
    header = _object(frames, 2, "header")
    task_id = _name(header, "task_id")
    exit_code = _int(header, "exit_code", 0, 255, tid=task_id)
    error = _error_info(header, task_id)
    return Result(task_id, exit_code, _frame(frames, 3, "result"), error)


def _decode_task_completed(frames: Sequence[bytes]) -> TaskCompleted:
    header = _object(frames, 2, "header")
    task_id = _name(header, "task_id")
    exit_code = _int(header, "exit_code", 0, 255, tid=task_id)
    attempts = _int(header, "attempts", 0, 1_000_000, 1, tid=task_id)
    error = _error_info(header, task_id)
    return TaskCompleted(task_id, exit_code, _frame(frames, 3, "result"), error, attempts)


def _decode_dead_letters(frames: Sequence[bytes]) -> DeadLetters:
    body = _object(frames, 2, "body")
    op = body.get("op")
    if op not in DLQ_OPS:
        raise ProtocolError(ERR_MALFORMED, f"'op' must be one of {', '.join(DLQ_OPS)}")
    task_id = None if body.get("task_id") is None else _name(body, "task_id")
    if op == DLQ_SHOW and task_id is None:
        raise ProtocolError(ERR_MALFORMED, "DLQ show needs a 'task_id'")
    limit = None if body.get("limit") is None else _int(body, "limit", 1, 1_000_000)
    return DeadLetters(op, task_id, limit)


def _decode_dead_letters_reply(frames: Sequence[bytes]) -> DeadLettersReply:
    body = _object(frames, 2, "body")
    if "dead_letter" not in body:
        return DeadLettersReply(body)  # only `show` carries the arguments frame
    return DeadLettersReply(body, _frame(frames, 3, "arguments"))


def _decode_error(frames: Sequence[bytes]) -> Error:
    body = _object(frames, 2, "body")
    code, message, task_id = body.get("code"), body.get("message"), body.get("task_id")
    if not isinstance(code, str) or not isinstance(message, str):
        raise ProtocolError(ERR_MALFORMED, "ERROR needs string 'code' and 'message'")
    return Error(code, message, task_id if isinstance(task_id, str) else None)


def _pairs(decode_one: Callable[[Sequence[bytes]], TaskMessage]) -> Callable[..., Message]:
    """A decoder for a task command: one (header, payload) pair, or a Batch of several."""

    def decode_pairs(frames: Sequence[bytes]) -> Message:
        if len(frames) < 6:
            return decode_one(frames)  # one pair; a lone trailing frame is ignored
        items: list[TaskMessage | ProtocolError] = []
        for i in range(2, len(frames) - 1, 2):
            try:
                items.append(decode_one((frames[0], frames[1], frames[i], frames[i + 1])))
            except ProtocolError as exc:
                items.append(exc)
        return Batch(tuple(items))

    return decode_pairs


_DECODERS: dict[bytes, Callable[[Sequence[bytes]], Message]] = {
    REGISTER: _decode_register,
    REGISTERED: _decode_registered,
    DEREGISTER: lambda frames: Deregister(),
    HEARTBEAT: lambda frames: Heartbeat(),
    DISCONNECT: _decode_disconnect,
    EXECUTE: _pairs(_decode_execute),
    RUN: _pairs(_decode_run),
    RESULT: _pairs(_decode_result),
    TASK_COMPLETED: _pairs(_decode_task_completed),
    STATUS: lambda frames: Status(),
    STATUS_REPLY: lambda frames: StatusReply(_object(frames, 2, "body")),
    DLQ: _decode_dead_letters,
    DLQ_REPLY: _decode_dead_letters_reply,
    ERROR: _decode_error,
}
