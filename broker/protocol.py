"""The ZTB/1 wire codec: every frame the broker, nodes and clients exchange.

protocol.md is the document for this module; the two change together. Frames here start
at the protocol tag: the empty delimiter frame before it belongs to the socket layer (a REQ
socket adds and strips it itself, DEALER peers send it explicitly).

Task arguments and results are opaque payload frames to the broker. Only nodes and clients
encode and decode them, with `dumps_payload` / `loads_payload`, which keep integers of any
size exact (orjson alone refuses or rounds those beyond 64 bits).

The vocabulary (constants, codes, message types) lives in `broker.messages` and the
decoders in `broker.decoding`; this module holds the encoders and re-exports both, so that
`broker.protocol` is the one import every part uses. Imports only the standard library
and orjson.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import orjson

from broker.decoding import decode as decode
from broker.messages import (
    DEFAULT_BROKER_URL as DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_INTERVAL as DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS as DEFAULT_LIVENESS,
    DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE,
    DEREGISTER as DEREGISTER,
    DISCONNECT as DISCONNECT,
    DLQ as DLQ,
    DLQ_LIST as DLQ_LIST,
    DLQ_OPS as DLQ_OPS,
    DLQ_PURGE as DLQ_PURGE,
    DLQ_REPLAY as DLQ_REPLAY,
    DLQ_REPLY as DLQ_REPLY,
    DLQ_SHOW as DLQ_SHOW,
    ERR_MALFORMED as ERR_MALFORMED,
    ERR_NOT_FOUND as ERR_NOT_FOUND,
    ERR_NOT_REGISTERED as ERR_NOT_REGISTERED,
    ERR_TOO_LARGE as ERR_TOO_LARGE,
    ERR_UNKNOWN_COMMAND as ERR_UNKNOWN_COMMAND,
    ERR_UNSUPPORTED_VERSION as ERR_UNSUPPORTED_VERSION,
    ERROR as ERROR,
    EXECUTE as EXECUTE,
    EXIT_BAD_ARGUMENTS as EXIT_BAD_ARGUMENTS,
    EXIT_BAD_REQUEST as EXIT_BAD_REQUEST,
    EXIT_BAD_RESULT as EXIT_BAD_RESULT,
    EXIT_EXPIRED as EXIT_EXPIRED,
    EXIT_FUNCTION_ERROR as EXIT_FUNCTION_ERROR,
    EXIT_NODE_LOST as EXIT_NODE_LOST,
    EXIT_OK as EXIT_OK,
    EXIT_TIMEOUT as EXIT_TIMEOUT,
    EXIT_UNKNOWN_FUNCTION as EXIT_UNKNOWN_FUNCTION,
    EXIT_WORKER_CRASHED as EXIT_WORKER_CRASHED,
    HEARTBEAT as HEARTBEAT,
    MAX_NAME_LENGTH as MAX_NAME_LENGTH,
    MAX_RETRIES as MAX_RETRIES,
    MAX_TIMEOUT_MS as MAX_TIMEOUT_MS,
    PRIORITY_DEFAULT as PRIORITY_DEFAULT,
    PRIORITY_MAX as PRIORITY_MAX,
    PRIORITY_MIN as PRIORITY_MIN,
    PROTOCOL_NAME as PROTOCOL_NAME,
    REGISTER as REGISTER,
    REGISTERED as REGISTERED,
    RESULT as RESULT,
    RUN as RUN,
    STATUS as STATUS,
    STATUS_REPLY as STATUS_REPLY,
    TAG as TAG,
    TASK_COMPLETED as TASK_COMPLETED,
    VERSION as VERSION,
    Batch as Batch,
    DeadLetters as DeadLetters,
    DeadLettersReply as DeadLettersReply,
    Deregister as Deregister,
    Disconnect as Disconnect,
    Error as Error,
    ErrorInfo as ErrorInfo,
    Execute as Execute,
    Heartbeat as Heartbeat,
    Message as Message,
    ProtocolError as ProtocolError,
    Register as Register,
    Registered as Registered,
    Replaces as Replaces,
    Result as Result,
    Run as Run,
    Status as Status,
    StatusReply as StatusReply,
    TaskCompleted as TaskCompleted,
    TaskMessage as TaskMessage,
    frozen as frozen,
)
from broker.payload import dumps_payload as dumps_payload, loads_payload as loads_payload

# ---------------------------------------------------------------------------------- encoding


_json = orjson.dumps  # for JSON bodies and headers (bytes, compact, no options)


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
    return execute_frames(
        m.task_id, m.function, m.payload, m.priority, m.retries, m.queue_timeout, m.timeout
    )


def execute_frames(
    task_id: str,
    function: str,
    payload: bytes,
    priority: int = PRIORITY_DEFAULT,
    retries: int | None = None,
    queue_timeout: float | None = None,
    timeout: float | None = None,
) -> list[bytes]:
    """`encode(Execute(...))` without the message: for a client's per-task path."""
    header = {"task_id": task_id, "function": function, "priority": priority}
    if retries is not None:
        header["retries"] = retries
    if queue_timeout is not None:
        header["queue_timeout_ms"] = round(queue_timeout * 1000)
    if timeout is not None:
        header["timeout_ms"] = round(timeout * 1000)
    return [TAG, EXECUTE, _json(header), payload]


def _encode_run(m: Any) -> list[bytes]:
    header = {"task_id": m.task_id, "function": m.function, "attempt": m.attempt}
    if m.timeout is not None:
        header["timeout_ms"] = round(m.timeout * 1000)
    return [TAG, RUN, _json(header), m.payload]


def _encode_result(m: Any) -> list[bytes]:
    return result_frames(m.task_id, m.exit_code, m.payload, m.error)


def result_frames(
    task_id: str, exit_code: int, payload: bytes, error: ErrorInfo | None = None
) -> list[bytes]:
    """`encode(Result(...))` without the message: for a node's per-task path."""
    header = {
        "task_id": task_id,
        "exit_code": exit_code,
        "error": None if error is None else error.to_json(),
    }
    return [TAG, RESULT, _json(header), payload]


def _encode_task_completed(m: Any) -> list[bytes]:
    header = {
        "task_id": m.task_id,
        "exit_code": m.exit_code,
        "error": None if m.error is None else m.error.to_json(),
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
