"""Decoding ZTB/1 frames into messages (protocol.md 3): every check a message must pass
before the broker, a node or a client acts on it.

One path per message: msgspec parses each header or body straight into a typed struct and
checks every field against `broker.protocol.limits` while it parses, in C. When it refuses
one, the error is translated into a RemoteProtocolError that names the field and its rule,
written from the same types, and carries the task id whenever the header has a readable one
(protocol.md 8.3). Decoders raise nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NoReturn

import msgspec
import orjson
from msgspec import Meta

from broker.protocol.errors import (
    ERR_MALFORMED,
    ERR_TOO_LARGE,
    ERR_UNKNOWN_COMMAND,
    ERR_UNSUPPORTED_VERSION,
    RemoteProtocolError,
)
from broker.protocol.limits import (
    MAX_BATCH_TASKS,
    MAX_CLAIMS,
    MAX_HOST_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TASK_REF_LENGTH,
    PRIORITY_DEFAULT,
    Attempt,
    Attempts,
    Backlog,
    Capacity,
    ClientId,
    Count,
    DeadLetterLimit,
    Dependencies,
    ExitCode,
    Functions,
    HeartbeatIntervalMs,
    Liveness,
    Name,
    Pid,
    Prefetch,
    Priority,
    QueueTimeoutMs,
    ReplacedPid,
    RetractedIds,
    RetractIds,
    Retries,
    RetryOn,
    StatusLimit,
    TaskRef,
    TaskTimeoutMs,
)
from broker.protocol.messages import (
    CANCEL,
    CANCELLED,
    DEREGISTER,
    DISCONNECT,
    DLQ,
    DLQ_REPLY,
    DLQ_SHOW,
    ERROR,
    EXECUTE,
    FETCH,
    HEARTBEAT,
    PROTOCOL_NAME,
    REGISTER,
    REGISTERED,
    RESULT,
    RETRACT,
    RETRACTED,
    RUN,
    STATUS,
    STATUS_REPLY,
    STOP,
    STORED,
    TAG,
    TASK_COMPLETED,
    VERSION,
    WAITING,
    Batch,
    Cancel,
    Cancelled,
    Claim,
    Deregister,
    Disconnect,
    Dlq,
    DlqReply,
    Error,
    ErrorInfo,
    Execute,
    Fetch,
    Heartbeat,
    Message,
    Register,
    Registered,
    Replaces,
    Result,
    Retract,
    Retracted,
    Run,
    Status,
    StatusReply,
    Stop,
    Stored,
    TaskCompleted,
    TaskMessage,
    TaskSpec,
    Waiting,
)

# ------------------------------------------------------------------ headers and bodies


class _ErrorHeader(msgspec.Struct, gc=False):
    type: str
    message: str
    retry: bool = False  # RESULT only: the function set calls the failure retryable


class _ExecuteHeader(msgspec.Struct, gc=False):
    task_id: Name
    function: Name
    priority: Priority = PRIORITY_DEFAULT
    retries: Retries | None = None
    queue_timeout_ms: QueueTimeoutMs | None = None
    timeout_ms: TaskTimeoutMs | None = None
    retry_on: RetryOn | None = None
    depends_on: Dependencies | None = None
    inputs: Dependencies | None = None
    parent: TaskRef | None = None
    client: ClientId | None = None
    traceparent: Any = None  # read by `_traceparent`: never refused


class _RunHeader(msgspec.Struct, gc=False):
    task_id: TaskRef
    function: Name
    attempt: Attempt = 1
    timeout_ms: TaskTimeoutMs | None = None
    inputs: Dependencies | None = None
    traceparent: Any = None


class _ResultHeader(msgspec.Struct, gc=False):
    task_id: TaskRef
    exit_code: ExitCode
    error: _ErrorHeader | None = None
    attempt: Attempt | None = None
    traceparent: Any = None


class _TaskCompletedHeader(msgspec.Struct, gc=False):
    task_id: Name
    exit_code: ExitCode
    error: _ErrorHeader | None = None
    attempts: Attempts = 1
    traceparent: Any = None


# A W3C trace context's traceparent (protocol.md 3.6): version 00, a trace id and a parent
# span id that are not all zeros, flags. Anything else reads as no trace context at all:
# tracing is advisory, and a task is never refused for it.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def _traceparent(value: Any) -> str | None:
    if type(value) is str and len(value) == 55 and _TRACEPARENT.fullmatch(value):
        return value
    return None


class _ReplacesBody(msgspec.Struct, gc=False):
    pid: ReplacedPid
    reason: str = ""


class _ClaimBody(msgspec.Struct, gc=False):
    task_id: TaskRef
    attempt: Attempt
    done: bool = False
    held: bool = False


class _RegisterBody(msgspec.Struct, gc=False):
    name: Name
    functions: Functions
    capacity: Capacity
    host: str = ""
    pid: Pid = 0
    replaces: _ReplacesBody | None = None
    prefetch: Prefetch = 0
    stop: bool = False
    attempts: Annotated[list[_ClaimBody], Meta(max_length=MAX_CLAIMS)] | None = None
    adopts_interval: bool = False
    packed: bool = False


class _RegisteredBody(msgspec.Struct, gc=False):
    node_id: Name
    heartbeat_interval_ms: HeartbeatIntervalMs
    liveness: Liveness
    backlog: msgspec.Raw = msgspec.Raw()  # a hint: read on its own, never refused
    stored: bool = False
    adopts: bool = False
    packed: bool = False


class _StoredBody(msgspec.Struct, gc=False):
    results: Count


class _HeartbeatBody(msgspec.Struct, gc=False):
    backlog: msgspec.Raw = msgspec.Raw()
    heartbeat_interval_ms: msgspec.Raw = msgspec.Raw()


class _RetractBody(msgspec.Struct, gc=False):
    task_ids: RetractIds


class _RetractedBody(msgspec.Struct, gc=False):
    returned: RetractedIds
    started: RetractedIds


class _TaskIdBody(msgspec.Struct, gc=False):
    task_id: TaskRef
    client: ClientId | None = None


class _WaitingBody(msgspec.Struct, gc=False):
    task_id: TaskRef
    waiting: bool


class _CancelledBody(msgspec.Struct, gc=False):
    task_id: TaskRef
    was: Literal["queued", "held", "running", "finished"]


class _DisconnectBody(msgspec.Struct, gc=False):
    reason: Any = ""  # free text; anything else reads as ""


class _DeadLettersBody(msgspec.Struct, gc=False):
    op: Literal["list", "show", "replay", "purge"]
    task_id: TaskRef | None = None
    limit: DeadLetterLimit | None = None


class _StatusBody(msgspec.Struct, gc=False):
    nodes: Literal["busiest", "all"] = "busiest"
    offset: Count = 0
    limit: StatusLimit | None = None
    stored: bool = False


class _ErrorBody(msgspec.Struct, gc=False):
    code: str
    message: str
    task_id: Any = None  # a non-string reads as null


_Object = dict[str, Any]

# What a field must be, for error messages, where the type alone does not say it well.
_RULES = {
    "functions": "a non-empty list of names (strings of 1 to 256 characters)",
    "error": "null or an object {type, message} of two strings",
    "replaces": "null or an object {pid, reason}: pid an integer from 1 to 2^63-1",
    "pid": "an integer from 0 to 2^63-1",
    "retry_on": 'null or a list of at most two of "exception" and "timeout"',
    "depends_on": "null or a list of 1 to 256 task ids",
    "inputs": "null or a list of 1 to 256 task ids",
    "client": 'null or a string of 1 to 64 characters without "|"',
}


def _describe(t: msgspec.inspect.Type) -> str:
    """What a value of type `t` must be, in words."""
    if isinstance(t, msgspec.inspect.StrType):
        if t.min_length and t.max_length:
            return f"a string of {t.min_length} to {t.max_length} characters"
        return "a string"
    if isinstance(t, msgspec.inspect.IntType):
        return f"an integer from {t.ge} to {t.le}"
    if isinstance(t, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(map(str, t.values))
    if isinstance(t, msgspec.inspect.UnionType):
        others = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
        if len(others) == 1 and len(others) < len(t.types):
            return f"{_describe(others[0])}, or null"
    return "a value of the documented type"


def _rules(struct: type[msgspec.Struct]) -> dict[str, str]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: _RULES.get(f.name) or _describe(f.type) for f in info.fields}


_FIELD_AT = re.compile(r"at `\$\.(\w+)")
_MISSING = re.compile(r"missing required field `(\w+)`")


def _field_of(error: str) -> str | None:
    """The header field a msgspec ValidationError is about (its top-level key), if any."""
    found = _FIELD_AT.search(error) or _MISSING.search(error)
    return None if found is None else found.group(1)


class _Reader:
    """Reads one kind of header or body frame into its struct; turns what msgspec refuses
    into a RemoteProtocolError that names the field and its rule."""

    def __init__(self, struct: type[Any], what: str, has_task: bool = False) -> None:
        self.decode: Callable[[bytes], Any] = msgspec.json.Decoder(struct).decode
        self.what = what  # "header" or "body", as protocol.md names the frame
        self.has_task = has_task  # a task command: name its task id in errors when readable
        self.rules = _rules(struct) if isinstance(struct, type) else {}

    def read(self, frames: Sequence[bytes], index: int = 2) -> Any:
        try:
            return self.decode(frames[index])
        except (msgspec.MsgspecError, RecursionError, IndexError) as exc:
            self.refuse(frames, index, exc)

    def refuse(self, frames: Sequence[bytes], index: int, exc: Exception) -> NoReturn:
        """Raise the RemoteProtocolError for a frame `self.decode` refused with `exc`."""
        if isinstance(exc, IndexError):
            _missing(frames, self.what, None)
        task_id = _task_id_in(frames[index]) if self.has_task else None
        if isinstance(exc, RecursionError):
            text = f"{self.what} frame nests too deeply"
        elif isinstance(exc, msgspec.ValidationError):
            field = _field_of(str(exc))
            if field is None:
                text = f"{self.what} frame must be a JSON object"
            else:
                text = f"{field!r} must be {self.rules.get(field, 'of the documented type')}"
                if field == "task_id":
                    task_id = None
        else:
            text = f"{self.what} frame is not valid JSON: {exc}"
        raise RemoteProtocolError(ERR_MALFORMED, text, task_id)


def _task_id_in(frame: bytes) -> str | None:
    """The task id of a header that failed its checks, when it has a valid one."""
    try:
        task_id = orjson.loads(frame).get("task_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(task_id, str) and 0 < len(task_id) <= MAX_TASK_REF_LENGTH:
        return task_id
    return None


def _missing(frames: Sequence[bytes], what: str, task_id: str | None) -> NoReturn:
    command = frames[1][:32].decode("ascii", "replace")
    raise RemoteProtocolError(ERR_MALFORMED, f"{command} needs a frame: {what}", task_id)


_EXECUTE = _Reader(_ExecuteHeader, "header", has_task=True)
_RUN = _Reader(_RunHeader, "header", has_task=True)
_RESULT = _Reader(_ResultHeader, "header", has_task=True)
_TASK_COMPLETED = _Reader(_TaskCompletedHeader, "header", has_task=True)
_REGISTER = _Reader(_RegisterBody, "body")
_REGISTERED = _Reader(_RegisteredBody, "body")
_DISCONNECT = _Reader(_DisconnectBody, "body")
_DEAD_LETTERS = _Reader(_DeadLettersBody, "body")
_RETRACT = _Reader(_RetractBody, "body")
_RETRACTED = _Reader(_RetractedBody, "body")
_ERROR = _Reader(_ErrorBody, "body")
_TASK_ID = _Reader(_TaskIdBody, "body", has_task=True)
_WAITING = _Reader(_WaitingBody, "body", has_task=True)
_CANCELLED = _Reader(_CancelledBody, "body", has_task=True)
_STOP = _Reader(_RetractBody, "body")
_STORED = _Reader(_StoredBody, "body")
_STATUS = _Reader(_StatusBody, "body")
_OBJECT = _Reader(_Object, "body")
_HEARTBEAT = msgspec.json.Decoder(_HeartbeatBody).decode
_BACKLOG = msgspec.json.Decoder(Backlog | None).decode
_INTERVAL_MS = msgspec.json.Decoder(HeartbeatIntervalMs).decode

# ------------------------------------------------------------------ the four task commands
# Each reads its header and its payload frame in one `try`: the common case pays for no
# other check. What fails is sorted out by `_refuse_task`.

_SLOW = (msgspec.MsgspecError, RecursionError, IndexError)


def _refuse_task(reader: _Reader, frames: Sequence[bytes], what: str) -> NoReturn:
    try:
        header = reader.decode(frames[2])
    except _SLOW as exc:
        reader.refuse(frames, 2, exc)
    _missing(frames, what, header.task_id)  # the header was fine: the payload frame is not


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _decode_execute(frames: Sequence[bytes]) -> Execute:
    try:
        h, args = _EXECUTE.decode(frames[2]), frames[3]
    except _SLOW:
        _refuse_task(_EXECUTE, frames, "arguments")
    return _execute_of(h, args)


def _execute_of(h: _ExecuteHeader, args: bytes) -> Execute:
    if (
        h.retries is None
        and h.queue_timeout_ms is None
        and h.timeout_ms is None
        and h.retry_on is None
        and h.depends_on is None
        and h.inputs is None
        and h.parent is None
        and h.traceparent is None
    ):  # most tasks
        return Execute(TaskSpec(h.task_id, h.function, args, h.priority), h.client)
    queue_timeout, task_timeout = _seconds(h.queue_timeout_ms), _seconds(h.timeout_ms)
    retry_on = None if h.retry_on is None else tuple(sorted(set(h.retry_on)))
    depends_on = None if h.depends_on is None else tuple(dict.fromkeys(h.depends_on))
    inputs = None if h.inputs is None else tuple(dict.fromkeys(h.inputs))
    if inputs is not None and not set(inputs).issubset(depends_on or ()):
        missing = next(i for i in inputs if i not in (depends_on or ()))
        raise RemoteProtocolError(
            ERR_MALFORMED,
            f"EXECUTE inputs names {missing!r}, which is not in depends_on; "
            "every input must also be a dependency",
            h.task_id,
        )
    spec = TaskSpec(
        h.task_id,
        h.function,
        args,
        h.priority,
        h.retries,
        queue_timeout,
        task_timeout,
        retry_on,
        depends_on,
        inputs,
        h.parent,
        _traceparent(h.traceparent),
    )
    return Execute(spec, h.client)


def _decode_run(frames: Sequence[bytes]) -> Run:
    try:
        h, args = _RUN.decode(frames[2]), frames[3]
    except _SLOW:
        _refuse_task(_RUN, frames, "arguments")
    return _run_of(h, args)


def _run_of(h: _RunHeader, args: bytes) -> Run:
    ms = h.timeout_ms  # most RUNs have none: no call for them
    task_timeout = None if ms is None else ms / 1000
    if h.inputs is None and h.traceparent is None:
        return Run(h.task_id, h.function, args, h.attempt, task_timeout)
    inputs = None if h.inputs is None else tuple(h.inputs)
    trace = _traceparent(h.traceparent)
    return Run(h.task_id, h.function, args, h.attempt, task_timeout, inputs, trace)


def _decode_result(frames: Sequence[bytes]) -> Result:
    try:
        h, result = _RESULT.decode(frames[2]), frames[3]
    except _SLOW:
        _refuse_task(_RESULT, frames, "result")
    return _result_of(h, result)


def _result_of(h: _ResultHeader, result: bytes) -> Result:
    error = h.error  # most RESULTs have none: no call for them
    trace = None if h.traceparent is None else _traceparent(h.traceparent)
    if error is None:
        return Result(h.task_id, h.exit_code, result, None, h.attempt, False, trace)
    info = ErrorInfo(error.type, error.message)
    return Result(h.task_id, h.exit_code, result, info, h.attempt, error.retry, trace)


def _decode_task_completed(frames: Sequence[bytes]) -> TaskCompleted:
    try:
        h, result = _TASK_COMPLETED.decode(frames[2]), frames[3]
    except _SLOW:
        _refuse_task(_TASK_COMPLETED, frames, "result")
    return _task_completed_of(h, result)


def _task_completed_of(h: _TaskCompletedHeader, result: bytes) -> TaskCompleted:
    error = h.error  # most answers have none: no call for them
    info = None if error is None else ErrorInfo(error.type, error.message)
    trace = None if h.traceparent is None else _traceparent(h.traceparent)
    return TaskCompleted(h.task_id, h.exit_code, result, info, h.attempts, trace)


def _pairs(decode_one: Callable[[Sequence[bytes]], TaskMessage]) -> Callable[..., Message]:
    """A decoder for a task command: one (header, payload) pair, or a Batch of several."""

    def decode_pairs(frames: Sequence[bytes]) -> Message:
        if _is_array(frames[2]):
            return _decode_packed(decode_one, frames)
        if len(frames) < 6:
            return decode_one(frames)  # one pair; a lone trailing frame is ignored
        if len(frames) > 3 + 2 * MAX_BATCH_TASKS:
            _too_many_tasks(frames, (len(frames) - 2) // 2)
        items: list[TaskMessage | RemoteProtocolError] = []
        for i in range(2, len(frames) - 1, 2):
            try:
                items.append(decode_one((frames[0], frames[1], frames[i], frames[i + 1])))
            except RemoteProtocolError as exc:
                items.append(exc)
        return Batch(tuple(items))

    return decode_pairs


_JSON_SPACE = b" \t\r\n"
_HEADERS = msgspec.json.Decoder(list[msgspec.Raw]).decode
_SIZES = msgspec.json.Decoder(list[Annotated[int, Meta(ge=0)]]).decode


def _is_array(frame: bytes) -> bool:
    """Whether a task command's frame 2 is a JSON array: the packed form (protocol.md 2.5),
    where the pair form has an object."""
    first = frame[:1]
    if first == b"[":
        return True
    return first in _JSON_SPACE and first != b"" and frame.lstrip(_JSON_SPACE)[:1] == b"["


def _refuse_packed(frames: Sequence[bytes], what: str) -> NoReturn:
    """A packed message refused whole (protocol.md 2.5): `what` follows its command's name."""
    command = frames[1][:32].decode("ascii", "replace")
    raise RemoteProtocolError(ERR_MALFORMED, f"a packed {command}{what}")


def _too_many_tasks(frames: Sequence[bytes], count: int) -> NoReturn:
    """A message of more tasks than MAX_BATCH_TASKS, refused whole (protocol.md 2.4)."""
    command = frames[1][:32].decode("ascii", "replace")
    raise RemoteProtocolError(
        ERR_TOO_LARGE,
        f"a message of {count} {command} tasks exceeds the limit of {MAX_BATCH_TASKS} tasks "
        "per message; send them in several messages",
    )


def _decode_packed(
    decode_one: Callable[[Sequence[bytes]], TaskMessage], frames: Sequence[bytes]
) -> Batch:
    """The packed form, five frames or more from the tag: a frame of headers, a frame of
    payload sizes and a frame of the payloads end to end (protocol.md 2.5). A message whose
    three frames disagree is refused whole; each header is then read as the pair form
    reads it, on its own."""
    headers, build = _packed_headers(frames)
    try:
        sizes = _SIZES(frames[3])
    except (msgspec.MsgspecError, RecursionError):
        _refuse_packed(frames, "'s sizes frame must be a JSON array of byte counts (>= 0)")
    payloads = frames[4]
    if not headers or len(sizes) != len(headers) or sum(sizes) != len(payloads):
        _refuse_packed(
            frames,
            f" has {len(headers)} headers, {len(sizes)} sizes summing to {sum(sizes)} and "
            f"{len(payloads)} payload bytes; it needs at least one header, a size for each, "
            "and as many payload bytes as the sizes sum to",
        )
    if len(headers) > MAX_BATCH_TASKS:
        _too_many_tasks(frames, len(headers))
    items: list[TaskMessage | RemoteProtocolError] = []
    tag, name, end = frames[0], frames[1], 0
    for header, size in zip(headers, sizes, strict=True):
        start, end = end, end + size
        try:
            if build is None:
                items.append(decode_one((tag, name, bytes(header), payloads[start:end])))
            else:
                items.append(build(header, payloads[start:end]))
        except RemoteProtocolError as exc:
            items.append(exc)
    return Batch(tuple(items), packed=True)


def _packed_headers(
    frames: Sequence[bytes],
) -> tuple[list[Any], Callable[[Any, bytes], TaskMessage] | None]:
    """A packed message's headers, with what makes a task's message of one and its payload.
    Most often every header is valid, and all are read in one msgspec call; else each is
    left as raw JSON (None: `decode_one` reads it), so that one bad header refuses only its
    own task."""
    typed = _PACKED.get(frames[1])
    if typed is not None:
        try:
            return typed[0](frames[2]), typed[1]
        except (msgspec.MsgspecError, RecursionError):
            pass
    try:
        return _HEADERS(frames[2]), None
    except (msgspec.MsgspecError, RecursionError):
        _refuse_packed(frames, "'s headers frame must be a JSON array")


# ------------------------------------------------------------------ the other commands


def _decode_register(frames: Sequence[bytes]) -> Register:
    b = _REGISTER.read(frames)
    replaces = None
    if b.replaces is not None:
        replaces = Replaces(b.replaces.pid, b.replaces.reason[:MAX_REASON_LENGTH])
    functions = tuple(dict.fromkeys(b.functions))  # duplicates dropped, first kept
    host = b.host[:MAX_HOST_LENGTH]
    attempts = None
    if b.attempts is not None:
        attempts = tuple(Claim(c.task_id, c.attempt, c.done, c.held) for c in b.attempts)
    return Register(
        b.name,
        host,
        b.pid,
        functions,
        b.capacity,
        replaces,
        b.prefetch,
        b.stop,
        attempts,
        b.adopts_interval,
        b.packed,
    )


def _decode_retract(frames: Sequence[bytes]) -> Retract:
    return Retract(tuple(_RETRACT.read(frames).task_ids))


def _decode_retracted(frames: Sequence[bytes]) -> Retracted:
    b = _RETRACTED.read(frames)
    return Retracted(tuple(b.returned), tuple(b.started))


def _task_and_client(frames: Sequence[bytes]) -> tuple[str, str | None]:
    body = _TASK_ID.read(frames)
    return body.task_id, body.client


def _decode_cancelled(frames: Sequence[bytes]) -> Cancelled:
    b = _CANCELLED.read(frames)
    return Cancelled(b.task_id, b.was)


def _decode_waiting(frames: Sequence[bytes]) -> Waiting:
    b = _WAITING.read(frames)
    return Waiting(b.task_id, b.waiting)


def _decode_registered(frames: Sequence[bytes]) -> Registered:
    b = _REGISTERED.read(frames)
    interval = b.heartbeat_interval_ms / 1000
    hint = _hint(b.backlog)
    return Registered(b.node_id, interval, b.liveness, hint, b.stored, b.adopts, b.packed)


def _decode_heartbeat(frames: Sequence[bytes]) -> Heartbeat:
    if len(frames) < 3:
        return Heartbeat()  # a node's, or a broker's that gives no hint
    try:
        body = _HEARTBEAT(frames[2])
    except (msgspec.MsgspecError, RecursionError):
        return Heartbeat()  # not a body: a sign of life all the same
    return Heartbeat(_hint(body.backlog), _interval(body.heartbeat_interval_ms))


def _interval(raw: msgspec.Raw) -> float | None:
    """A heartbeat interval announced in HEARTBEAT (protocol.md 7.1), in seconds: one that
    is not an integer of milliseconds within the limits reads as not announced."""
    if not raw:
        return None
    try:
        interval_ms: int = _INTERVAL_MS(raw)
    except msgspec.MsgspecError:
        return None
    return interval_ms / 1000


def _hint(raw: msgspec.Raw) -> int | None:
    """The backlog hint (HEARTBEAT, REGISTERED): advisory, so a value that is not an integer
    within the limits reads as null rather than refusing the message (protocol.md 3.4)."""
    if not raw:
        return None
    try:
        backlog: int | None = _BACKLOG(raw)
    except msgspec.MsgspecError:
        return None
    return backlog


def _decode_disconnect(frames: Sequence[bytes]) -> Disconnect:
    reason = _DISCONNECT.read(frames).reason
    return Disconnect(reason if isinstance(reason, str) else "")


def _decode_dead_letters(frames: Sequence[bytes]) -> Dlq:
    b = _DEAD_LETTERS.read(frames)
    if b.op == DLQ_SHOW and b.task_id is None:
        raise RemoteProtocolError(ERR_MALFORMED, "DLQ show needs a 'task_id'")
    return Dlq(b.op, b.task_id, b.limit)


def _decode_dead_letters_reply(frames: Sequence[bytes]) -> DlqReply:
    body = _OBJECT.read(frames)
    if "dead_letter" not in body:
        return DlqReply(body)  # only `show` carries the arguments frame
    if len(frames) < 4:
        _missing(frames, "arguments", None)
    return DlqReply(body, frames[3])


def _decode_status(frames: Sequence[bytes]) -> Status:
    if len(frames) < 3:  # no body: the defaults
        return Status()
    b = _STATUS.read(frames)
    return Status(b.nodes, b.offset, b.limit, b.stored)


def _decode_error(frames: Sequence[bytes]) -> Error:
    b = _ERROR.read(frames)
    return Error(b.code, b.message, b.task_id if isinstance(b.task_id, str) else None)


# ------------------------------------------------------------------ the entry point

# The per-task decoders for a message of one task, which `decode` calls without going
# through `_pairs`: one call less on every task's way.
_ONE_TASK: dict[bytes, Callable[[Sequence[bytes]], TaskMessage]] = {
    EXECUTE: _decode_execute,
    RUN: _decode_run,
    RESULT: _decode_result,
    TASK_COMPLETED: _decode_task_completed,
}

# A packed message's headers read in one call (`_decode_packed`), and what makes each task's
# message of its header and payload, as the per-task decoders do after their header.
_PACKED: dict[bytes, tuple[Callable[[bytes], list[Any]], Callable[[Any, bytes], TaskMessage]]] = {
    EXECUTE: (msgspec.json.Decoder(list[_ExecuteHeader]).decode, _execute_of),
    RUN: (msgspec.json.Decoder(list[_RunHeader]).decode, _run_of),
    RESULT: (msgspec.json.Decoder(list[_ResultHeader]).decode, _result_of),
    TASK_COMPLETED: (msgspec.json.Decoder(list[_TaskCompletedHeader]).decode, _task_completed_of),
}

DECODERS: dict[bytes, Callable[[Sequence[bytes]], Message]] = {
    REGISTER: _decode_register,
    REGISTERED: _decode_registered,
    DEREGISTER: lambda frames: Deregister(),
    HEARTBEAT: _decode_heartbeat,
    DISCONNECT: _decode_disconnect,
    **{command: _pairs(decode_one) for command, decode_one in _ONE_TASK.items()},
    STATUS: _decode_status,
    STATUS_REPLY: lambda frames: StatusReply(_OBJECT.read(frames)),
    DLQ: _decode_dead_letters,
    DLQ_REPLY: _decode_dead_letters_reply,
    ERROR: _decode_error,
    RETRACT: _decode_retract,
    RETRACTED: _decode_retracted,
    CANCEL: lambda frames: Cancel(*_task_and_client(frames)),
    CANCELLED: _decode_cancelled,
    FETCH: lambda frames: Fetch(*_task_and_client(frames)),
    STOP: lambda frames: Stop(tuple(_STOP.read(frames).task_ids)),
    WAITING: _decode_waiting,
    STORED: lambda frames: Stored(_STORED.read(frames).results),
}


def oversized(frames: Sequence[bytes], size: int, limit: int) -> RemoteProtocolError:
    """The error for a message of `size` bytes (from the tag on) over `limit`, naming its
    task when its header can be read (a header is small even when its payload is not)."""
    task_id = None
    if len(frames) >= 3 and frames[1] in _ONE_TASK and len(frames[2]) <= 65536:
        task_id = _task_id_in(frames[2])
    text = f"message of {size} bytes exceeds the broker's limit of {limit} bytes"
    return RemoteProtocolError(ERR_TOO_LARGE, text, task_id)


# A tag is "ZTB" and a version: a decimal number without leading zeros (protocol.md 2.1).
_TAG = re.compile(rb"ZTB([1-9][0-9]{0,8})")


def decode(frames: Sequence[bytes]) -> Message:
    """The message in `frames` (starting at the protocol tag). Raises only
    RemoteProtocolError."""
    if len(frames) < 2:
        raise RemoteProtocolError(ERR_MALFORMED, f"expected at least 2 frames, got {len(frames)}")
    if frames[0] != TAG:
        _refuse_tag(frames[0])
    if len(frames) < 6:  # one header and payload at most: no batch (protocol.md 2.4)
        decode_one = _ONE_TASK.get(frames[1])
        if decode_one is not None:
            if len(frames) == 5 and _is_array(frames[2]):
                return _decode_packed(decode_one, frames)  # packed (2.5)
            return decode_one(frames)
    decoder = DECODERS.get(frames[1])
    if decoder is None:
        name = frames[1][:32].decode("ascii", "replace")
        raise RemoteProtocolError(ERR_UNKNOWN_COMMAND, f"unknown command {name!r}")
    return decoder(frames)


def _refuse_tag(tag: bytes) -> NoReturn:
    found = _TAG.fullmatch(tag)
    if found is not None:
        raise RemoteProtocolError(
            ERR_UNSUPPORTED_VERSION,
            f"protocol version {found.group(1).decode()} is not supported; this broker speaks "
            f"version {VERSION}",
        )
    raise RemoteProtocolError(
        ERR_MALFORMED,
        f"first frame must be the tag {TAG.decode()!r} ({PROTOCOL_NAME.decode()} and a version "
        f"number without leading zeros), got {tag[:16]!r}",
    )
