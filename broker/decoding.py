"""Decoding ZTB/1 frames into messages (protocol.md 3): every check a message must pass
before the broker, a node or a client acts on it. Used through `broker.protocol.decode`.

Imports only the standard library and orjson.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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


# The four per-task decoders read the common shape of a header (the fields our encoders
# write, nothing unknown, no options) with one test of all its fields, and fall back to
# the field-by-field checks, which name what is wrong, for anything else. The fast test
# accepts only what those checks accept, with the same values (a property test holds the
# two paths to that). `type(x) is str` equals isinstance here: orjson makes no subclasses.


def _decode_execute(frames: Sequence[bytes]) -> Execute:
    header = _object(frames, 2, "header")
    task_id, function = header.get("task_id"), header.get("function")
    priority = header.get("priority", PRIORITY_DEFAULT)
    if (
        len(frames) > 3
        and len(header) == 2 + ("priority" in header)
        and type(task_id) is str
        and 0 < len(task_id) <= MAX_NAME_LENGTH
        and type(function) is str
        and 0 < len(function) <= MAX_NAME_LENGTH
        and type(priority) is int
        and PRIORITY_MIN <= priority <= PRIORITY_MAX
    ):
        return Execute(task_id, function, frames[3], priority)
    return _checked_execute(header, frames)


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


def _decode_run(frames: Sequence[bytes]) -> Run:
    header = _object(frames, 2, "header")
    task_id, function = header.get("task_id"), header.get("function")
    attempt = header.get("attempt", 1)
    if (
        len(frames) > 3
        and len(header) == 2 + ("attempt" in header)
        and type(task_id) is str
        and 0 < len(task_id) <= MAX_NAME_LENGTH
        and type(function) is str
        and 0 < len(function) <= MAX_NAME_LENGTH
        and type(attempt) is int
        and 1 <= attempt <= MAX_ATTEMPT
    ):
        return Run(task_id, function, frames[3], attempt)
    return _checked_run(header, frames)


def _checked_run(header: dict[str, Any], frames: Sequence[bytes]) -> Run:
    task_id = _name(header, "task_id")
    function = _name(header, "function", task_id)
    attempt = _int(header, "attempt", 1, MAX_ATTEMPT, 1, tid=task_id)
    timeout = _timeout(header, task_id)
    return Run(task_id, function, _frame(frames, 3, "arguments"), attempt, timeout)


def _decode_result(frames: Sequence[bytes]) -> Result:
    header = _object(frames, 2, "header")
    task_id, exit_code = header.get("task_id"), header.get("exit_code")
    if (
        len(frames) > 3
        and len(header) == 2 + ("error" in header)
        and header.get("error") is None
        and type(task_id) is str
        and 0 < len(task_id) <= MAX_NAME_LENGTH
        and type(exit_code) is int
        and 0 <= exit_code <= 255
    ):
        return Result(task_id, exit_code, frames[3])
    return _checked_result(header, frames)


def _checked_result(header: dict[str, Any], frames: Sequence[bytes]) -> Result:
    task_id = _name(header, "task_id")
    exit_code = _int(header, "exit_code", 0, 255, tid=task_id)
    error = _error_info(header, task_id)
    return Result(task_id, exit_code, _frame(frames, 3, "result"), error)


def _decode_task_completed(frames: Sequence[bytes]) -> TaskCompleted:
    header = _object(frames, 2, "header")
    task_id, exit_code = header.get("task_id"), header.get("exit_code")
    attempts = header.get("attempts", 1)
    if (
        len(frames) > 3
        and len(header) == 2 + ("error" in header) + ("attempts" in header)
        and header.get("error") is None
        and type(task_id) is str
        and 0 < len(task_id) <= MAX_NAME_LENGTH
        and type(exit_code) is int
        and 0 <= exit_code <= 255
        and type(attempts) is int
        and 0 <= attempts <= MAX_ATTEMPT
    ):
        return TaskCompleted(task_id, exit_code, frames[3], None, attempts)
    return _checked_task_completed(header, frames)


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
_ONE_TASK: dict[bytes, Callable[[Sequence[bytes]], Message]] = {
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
