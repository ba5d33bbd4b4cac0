"""Decoding ZTB/1 frames into messages (protocol.md 3): every check a message must pass
before the broker, a node or a client acts on it. Used through `broker.protocol.decode`.

Imports only the standard library, orjson and msgspec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
import orjson

from broker.messages import (
    DEREGISTER,
    DISCONNECT,
    DLQ,
    DLQ_OPS,
    DLQ_REPLY,
    DLQ_SHOW,
    ERR_MALFORMED,
    ERR_UNKNOWN_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    ERROR,
    EXECUTE,
    HEARTBEAT,
    MAX_NAME_LENGTH,
    MAX_RETRIES,
    MAX_TIMEOUT_MS,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PROTOCOL_NAME,
    REGISTER,
    REGISTERED,
    RESULT,
    RUN,
    STATUS,
    STATUS_REPLY,
    TAG,
    TASK_COMPLETED,
    VERSION,
    Batch,
    DeadLetters,
    DeadLettersReply,
    Deregister,
    Disconnect,
    Error,
    ErrorInfo,
    Execute,
    Heartbeat,
    Message,
    ProtocolError,
    Register,
    Registered,
    Replaces,
    Result,
    Run,
    Status,
    StatusReply,
    TaskCompleted,
    TaskMessage,
)

_loads = orjson.loads
MAX_ATTEMPT = 1_000_000  # attempt and attempts fields


def decode(frames: Sequence[bytes]) -> Message:
    """The message in `frames` (starting at the protocol tag). Raises only ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError(ERR_MALFORMED, f"expected at least 2 frames, got {len(frames)}")
    tag = frames[0]
    if tag != TAG:
        _refuse_tag(tag)
    if len(frames) < 6:  # one header and payload at most: no batch (protocol.md 2.4)
        decode_one = _ONE_TASK.get(frames[1])
        if decode_one is not None:
            return decode_one(frames)
    decoder = DECODERS.get(frames[1])
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
    try:
        body = _loads(frames[index])
    except IndexError:
        _frame(frames, index, what)  # raises, naming the missing frame
        raise
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ERR_MALFORMED, f"{what} frame is not valid JSON: {exc}") from None
    if type(body) is not dict:
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


# The four per-task decoders read the header with msgspec, which checks every field's type
# and range in C while it parses, into a small struct (about half the instructions of
# orjson.loads plus the same checks in Python). Anything it refuses goes through the
# field-by-field checks below, which name what is wrong; a property test holds the two
# paths to the same message or the same error.

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_ExitCode = Annotated[int, msgspec.Meta(ge=0, le=255)]
_MISFIT = (msgspec.MsgspecError, RecursionError, IndexError)  # then: the checked path


class _ErrorHeader(msgspec.Struct, gc=False):
    type: str
    message: str


class _ExecuteHeader(msgspec.Struct, gc=False):
    task_id: _Name
    function: _Name
    priority: Annotated[int, msgspec.Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)] = PRIORITY_DEFAULT
    retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] | None = None
    queue_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=86_400_000)] | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT_MS)] | None = None


class _RunHeader(msgspec.Struct, gc=False):
    task_id: _Name
    function: _Name
    attempt: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPT)] = 1
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT_MS)] | None = None


class _ResultHeader(msgspec.Struct, gc=False):
    task_id: _Name
    exit_code: _ExitCode
    error: _ErrorHeader | None = None


class _TaskCompletedHeader(msgspec.Struct, gc=False):
    task_id: _Name
    exit_code: _ExitCode
    attempts: Annotated[int, msgspec.Meta(ge=0, le=MAX_ATTEMPT)] = 1
    error: _ErrorHeader | None = None


_execute_header = msgspec.json.Decoder(_ExecuteHeader).decode
_run_header = msgspec.json.Decoder(_RunHeader).decode
_result_header = msgspec.json.Decoder(_ResultHeader).decode
_task_completed_header = msgspec.json.Decoder(_TaskCompletedHeader).decode


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _error(error: _ErrorHeader | None) -> ErrorInfo | None:
    return None if error is None else ErrorInfo(error.type, error.message)


def _decode_execute(frames: Sequence[bytes]) -> Execute:
    try:
        h, payload = _execute_header(frames[2]), frames[3]
    except _MISFIT:
        return _checked_execute(_object(frames, 2, "header"), frames)
    if h.retries is None and h.queue_timeout_ms is None and h.timeout_ms is None:
        return Execute(h.task_id, h.function, payload, h.priority)  # most tasks
    queue_timeout, timeout = _seconds(h.queue_timeout_ms), _seconds(h.timeout_ms)
    return Execute(h.task_id, h.function, payload, h.priority, h.retries, queue_timeout, timeout)


def _decode_run(frames: Sequence[bytes]) -> Run:
    try:
        h, payload = _run_header(frames[2]), frames[3]
    except _MISFIT:
        return _checked_run(_object(frames, 2, "header"), frames)
    return Run(h.task_id, h.function, payload, h.attempt, _seconds(h.timeout_ms))


def _decode_result(frames: Sequence[bytes]) -> Result:
    try:
        h, payload = _result_header(frames[2]), frames[3]
    except _MISFIT:
        return _checked_result(_object(frames, 2, "header"), frames)
    return Result(h.task_id, h.exit_code, payload, _error(h.error))


def _decode_task_completed(frames: Sequence[bytes]) -> TaskCompleted:
    try:
        h, payload = _task_completed_header(frames[2]), frames[3]
    except _MISFIT:
        return _checked_task_completed(_object(frames, 2, "header"), frames)
    return TaskCompleted(h.task_id, h.exit_code, payload, _error(h.error), h.attempts)


def _checked_execute(header: dict[str, Any], frames: Sequence[bytes]) -> Execute:
    task_id = _name(header, "task_id")
    function = _name(header, "function", task_id)
    priority = _int(header, "priority", PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT, tid=task_id)
    payload = _frame(frames, 3, "arguments")
    retries = queue_timeout = None
    if header.get("retries") is not None:
        retries = _int(header, "retries", 0, MAX_RETRIES, tid=task_id)
    if header.get("queue_timeout_ms") is not None:
        queue_timeout = _int(header, "queue_timeout_ms", 1, 86_400_000, tid=task_id) / 1000
    timeout = _timeout(header, task_id)
    return Execute(task_id, function, payload, priority, retries, queue_timeout, timeout)


def _timeout(header: dict[str, Any], task_id: str) -> float | None:
    if header.get("timeout_ms") is None:
        return None
    return _int(header, "timeout_ms", 1, MAX_TIMEOUT_MS, tid=task_id) / 1000


def _checked_run(header: dict[str, Any], frames: Sequence[bytes]) -> Run:
    task_id = _name(header, "task_id")
    function = _name(header, "function", task_id)
    attempt = _int(header, "attempt", 1, MAX_ATTEMPT, 1, tid=task_id)
    timeout = _timeout(header, task_id)
    return Run(task_id, function, _frame(frames, 3, "arguments"), attempt, timeout)


def _checked_result(header: dict[str, Any], frames: Sequence[bytes]) -> Result:
    task_id = _name(header, "task_id")
    exit_code = _int(header, "exit_code", 0, 255, tid=task_id)
    error = _error_info(header, task_id)
    return Result(task_id, exit_code, _frame(frames, 3, "result"), error)


def _checked_task_completed(header: dict[str, Any], frames: Sequence[bytes]) -> TaskCompleted:
    task_id = _name(header, "task_id")
    exit_code = _int(header, "exit_code", 0, 255, tid=task_id)
    attempts = _int(header, "attempts", 0, MAX_ATTEMPT, 1, tid=task_id)
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


# The per-task decoders for a message of one task, which `decode` calls without going
# through `_pairs`: one call less on every task's way.
_ONE_TASK: dict[bytes, Callable[[Sequence[bytes]], TaskMessage]] = {
    EXECUTE: _decode_execute,
    RUN: _decode_run,
    RESULT: _decode_result,
    TASK_COMPLETED: _decode_task_completed,
}

DECODERS: dict[bytes, Callable[[Sequence[bytes]], Message]] = {
    REGISTER: _decode_register,
    REGISTERED: _decode_registered,
    DEREGISTER: lambda frames: Deregister(),
    HEARTBEAT: lambda frames: Heartbeat(),
    DISCONNECT: _decode_disconnect,
    **{command: _pairs(decode_one) for command, decode_one in _ONE_TASK.items()},
    STATUS: lambda frames: Status(),
    STATUS_REPLY: lambda frames: StatusReply(_object(frames, 2, "body")),
    DLQ: _decode_dead_letters,
    DLQ_REPLY: _decode_dead_letters_reply,
    ERROR: _decode_error,
}
