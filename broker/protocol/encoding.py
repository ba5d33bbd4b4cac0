"""Encoding messages into ZTB/1 frames (protocol.md 3), from the tag on.

The empty delimiter frame before the tag belongs to the socket layer: a REQ socket adds and
strips it itself, DEALER peers send it explicitly. Headers are compact JSON with keys in the
order of protocol.md's field tables; optional keys are written only when set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby
from typing import Any, TypeVar, cast

import msgspec
import orjson
from msgspec import Struct

from broker.protocol.errors import ERR_MALFORMED, LocalProtocolError, ProtocolError
from broker.protocol.messages import (
    CANCEL,
    CANCELLED,
    DEREGISTER,
    DISCONNECT,
    DLQ,
    DLQ_REPLY,
    ERROR,
    EXECUTE,
    FETCH,
    HEARTBEAT,
    NODES_BUSIEST,
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

_json = orjson.dumps  # compact JSON as bytes, keys in insertion order


def encode(msg: Message) -> list[bytes]:
    """Frames for `msg`, starting at the protocol tag. LocalProtocolError if it is not a
    message this codec knows."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise LocalProtocolError(ERR_MALFORMED, f"not a protocol message: {msg!r}")
    return encoder(msg)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def execute_frames(spec: TaskSpec, client: str | None = None) -> list[bytes]:
    """The EXECUTE of one task: `encode(Execute(spec, client))` without the message in
    between."""
    header: dict[str, Any] = {
        "task_id": spec.task_id,
        "function": spec.function,
        "priority": spec.priority,
    }
    if spec.retries is not None:
        header["retries"] = spec.retries
    if spec.queue_timeout is not None:
        header["queue_timeout_ms"] = _ms(spec.queue_timeout)
    if spec.task_timeout is not None:
        header["timeout_ms"] = _ms(spec.task_timeout)
    if spec.retry_on is not None:
        header["retry_on"] = list(spec.retry_on)
    if spec.depends_on is not None:
        header["depends_on"] = list(spec.depends_on)
    if spec.inputs is not None:
        header["inputs"] = list(spec.inputs)
    if spec.parent is not None:
        header["parent"] = spec.parent
    if client is not None:
        header["client"] = client
    if spec.traceparent is not None:
        header["traceparent"] = spec.traceparent
    return [TAG, EXECUTE, _json(header), spec.args]


def run_frames(run: Run) -> list[bytes]:
    return [TAG, RUN, _json_struct(_run_header(run)), run.args]


def result_frames(
    task_id: str,
    exit_code: int,
    result: bytes,
    error: ErrorInfo | None = None,
    attempt: int | None = None,
    retry: bool = False,
    traceparent: str | None = None,
) -> list[bytes]:
    """The RESULT of one task: `encode(Result(...))` without the message in between.
    `retry`: the function set calls this failure retryable (error `retry`, protocol.md 3.8)."""
    info: dict[str, Any] | None = None
    if error is not None:
        info = {"type": error.type, "message": error.message}
        if retry:
            info["retry"] = True
    header: dict[str, Any] = {"task_id": task_id, "exit_code": exit_code, "error": info}
    if attempt is not None:
        header["attempt"] = attempt
    if traceparent is not None:
        header["traceparent"] = traceparent
    return [TAG, RESULT, _json(header), result]


def _encode_register(m: Register) -> list[bytes]:
    body: dict[str, Any] = {
        "name": m.name,
        "host": m.host,
        "pid": m.pid,
        "functions": list(m.functions),
        "capacity": m.capacity,
    }
    if m.replaces is not None:
        body["replaces"] = {"pid": m.replaces.pid, "reason": m.replaces.reason}
    if m.prefetch:
        body["prefetch"] = m.prefetch
    if m.stop:
        body["stop"] = True
    if m.attempts is not None:
        body["attempts"] = [_claim(c) for c in m.attempts]
    if m.adopts_interval:
        body["adopts_interval"] = True
    if m.packed:
        body["packed"] = True
    return [TAG, REGISTER, _json(body)]


def _claim(c: Claim) -> dict[str, Any]:
    claim: dict[str, Any] = {"task_id": c.task_id, "attempt": c.attempt}
    if c.done:
        claim["done"] = True
    if c.held:
        claim["held"] = True
    return claim


def _encode_registered(m: Registered) -> list[bytes]:
    body: dict[str, Any] = {
        "node_id": m.node_id,
        "heartbeat_interval_ms": _ms(m.heartbeat_interval),
        "liveness": m.liveness,
    }
    if m.backlog is not None:
        body["backlog"] = m.backlog
    if m.stored:
        body["stored"] = True
    if m.adopts:
        body["adopts"] = True
    if m.packed:
        body["packed"] = True
    return [TAG, REGISTERED, _json(body)]


def _encode_heartbeat(m: Heartbeat) -> list[bytes]:
    if m.interval is not None:
        body: dict[str, Any] = {"heartbeat_interval_ms": _ms(m.interval)}
        if m.backlog is not None:
            body["backlog"] = m.backlog
        return [TAG, HEARTBEAT, _json(body)]
    if m.backlog is None:
        return [TAG, HEARTBEAT]
    return [TAG, HEARTBEAT, _json({"backlog": m.backlog})]


def _encode_result(m: Result) -> list[bytes]:
    return result_frames(
        m.task_id, m.exit_code, m.result, m.error, m.attempt, m.retry, m.traceparent
    )


def _encode_task_completed(m: TaskCompleted) -> list[bytes]:
    return [TAG, TASK_COMPLETED, _json_struct(_answer_header(m)), m.result]


def _encode_dead_letters(m: Dlq) -> list[bytes]:
    body: dict[str, Any] = {"op": m.op}
    if m.task_id is not None:
        body["task_id"] = m.task_id
    if m.limit is not None:
        body["limit"] = m.limit
    return [TAG, DLQ, _json(body)]


def _encode_dead_letters_reply(m: DlqReply) -> list[bytes]:
    frames = [TAG, DLQ_REPLY, _json(m.body)]
    return frames if m.args is None else [*frames, m.args]


def _encode_status(m: Status) -> list[bytes]:
    """No body for the defaults (as every broker reads it); else only what differs."""
    body: dict[str, Any] = {}
    if m.nodes != NODES_BUSIEST:
        body["nodes"] = m.nodes
    if m.offset:
        body["offset"] = m.offset
    if m.limit is not None:
        body["limit"] = m.limit
    if m.stored:
        body["stored"] = True
    return [TAG, STATUS, _json(body)] if body else [TAG, STATUS]


def _encode_error(m: Error) -> list[bytes]:
    return [TAG, ERROR, _json({"code": m.code, "message": m.message, "task_id": m.task_id})]


# ------------------------------------------------------------------------------- batches

BATCH_MAX_TASKS = 256  # tasks per message the reference peers put in one batch (2.4)
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
    """One message carrying several tasks of one command: [tag, command, h1, p1, h2, p2...]."""
    frames = encode(messages[0])
    kind = type(messages[0])
    for message in messages[1:]:
        if type(message) is not kind:
            raise LocalProtocolError(
                ERR_MALFORMED, f"a batch holds one command; got {kind.__name__} and {message!r}"
            )
        frames += encode(message)[2:4]
    return frames


def encode_packed(messages: Sequence[TaskMessage]) -> list[bytes]:
    """Several tasks of one command in the packed form (protocol.md 2.5): [tag, command,
    [h1,h2,...], [size1,size2,...], p1p2...]."""
    kind = type(messages[0])
    if any(type(message) is not kind for message in messages):
        raise LocalProtocolError(ERR_MALFORMED, f"a batch holds one command, not only {kind}")
    if kind is Run:
        return _packed_runs(cast(Sequence[Run], messages))
    if kind is TaskCompleted:
        return _packed_answers(cast(Sequence[TaskCompleted], messages))
    return encode_packed_frames([encode(message) for message in messages])


# The headers of RUN and TASK_COMPLETED, which the broker sends by the thousand in bulk work:
# msgspec writes them from these structs (keys in the order of the fields; an optional key
# only when set; `error` always), one alone or a packed message's frame of them in one call.
class _RunHeaderOut(Struct, omit_defaults=True, gc=False):
    task_id: str
    function: str
    attempt: int
    timeout_ms: int | None = None
    inputs: tuple[str, ...] | None = None
    traceparent: str | None = None


class _TaskCompletedHeaderOut(Struct, omit_defaults=True, gc=False):
    task_id: str
    exit_code: int
    error: ErrorInfo | None  # (no default: written as null when there is none)
    attempts: int
    traceparent: str | None = None


_json_struct = msgspec.json.Encoder().encode


def _run_header(r: Run) -> _RunHeaderOut:
    timeout_ms = None if r.task_timeout is None else _ms(r.task_timeout)
    return _RunHeaderOut(r.task_id, r.function, r.attempt, timeout_ms, r.inputs, r.traceparent)


def _answer_header(a: TaskCompleted) -> _TaskCompletedHeaderOut:
    return _TaskCompletedHeaderOut(a.task_id, a.exit_code, a.error, a.attempts, a.traceparent)


def _packed_runs(runs: Sequence[Run]) -> list[bytes]:
    return _packed(RUN, [_run_header(r) for r in runs], [r.args for r in runs])


def _packed_answers(answers: Sequence[TaskCompleted]) -> list[bytes]:
    return _packed(
        TASK_COMPLETED, [_answer_header(a) for a in answers], [a.result for a in answers]
    )


def _packed(command: bytes, headers: list[Any], payloads: list[bytes]) -> list[bytes]:
    sizes = _json([len(p) for p in payloads])
    return [TAG, command, _json_struct(headers), sizes, b"".join(payloads)]


def encode_tasks(messages: Sequence[TaskMessage], packed: bool) -> list[bytes]:
    """One message for tasks of one command: packed (protocol.md 2.5) for a peer that reads
    it, else in pairs (2.4); a task alone in the plain form either way."""
    if packed and len(messages) > 1:
        return encode_packed(messages)
    return encode_batch(messages)


def encode_packed_frames(messages: Sequence[list[bytes]]) -> list[bytes]:
    """`encode_packed` of messages encoded already, one task each, of one command."""
    first = messages[0]
    headers = b"[" + b",".join([frames[2] for frames in messages]) + b"]"
    payloads = [frames[3] for frames in messages]
    return [first[0], first[1], headers, _json([len(p) for p in payloads]), b"".join(payloads)]


_BATCHED = (Run, TaskCompleted)  # what the broker groups when one peer gets several


def encode_many(messages: list[Message], packed: bool = False) -> Iterator[list[bytes]]:
    """Frames for `messages` to one peer, in order: consecutive RUNs or TASK_COMPLETEDs go
    as batches (2.4; packed, 2.5, for a peer that takes it), every other message alone."""
    for kind, group in groupby(messages, key=type):
        if kind in _BATCHED:  # (one kind to a group: no check of it per batch)
            tasks = cast(Iterator[TaskMessage], group)
            for batch in batches(tasks, _payload_size):
                if len(batch) == 1:
                    yield encode(batch[0])
                elif packed:
                    yield _packed_runs(batch) if kind is Run else _packed_answers(batch)  # type: ignore[arg-type]
                else:
                    yield encode_batch(batch)
        else:
            yield from map(encode, group)


def _payload_size(task: TaskMessage) -> int:
    return len(task.args) if type(task) is Run else len(cast(TaskCompleted, task).result)


def _task_and_client(task_id: str, client: str | None) -> bytes:
    """The body of CANCEL and FETCH."""
    return _json({"task_id": task_id} if client is None else {"task_id": task_id, "client": client})


def _encode_batch(batch: Batch) -> list[bytes]:
    items = [item for item in batch.items if not isinstance(item, ProtocolError)]
    if len(items) != len(batch.items) or not items:
        raise LocalProtocolError(
            ERR_MALFORMED, "only a non-empty Batch of messages (no errors) can be encoded"
        )
    return encode_packed(items) if batch.packed else encode_batch(items)


_ENCODERS: dict[type, Callable[[Any], list[bytes]]] = {
    Register: _encode_register,
    Registered: _encode_registered,
    Deregister: lambda m: [TAG, DEREGISTER],
    Heartbeat: _encode_heartbeat,
    Disconnect: lambda m: [TAG, DISCONNECT, _json({"reason": m.reason})],
    Execute: lambda m: execute_frames(m.spec, m.client),
    Run: run_frames,
    Result: _encode_result,
    TaskCompleted: _encode_task_completed,
    Status: _encode_status,
    StatusReply: lambda m: [TAG, STATUS_REPLY, _json(m.body)],
    Dlq: _encode_dead_letters,
    DlqReply: _encode_dead_letters_reply,
    Error: _encode_error,
    Retract: lambda m: [TAG, RETRACT, _json({"task_ids": list(m.task_ids)})],
    Retracted: lambda m: [
        TAG,
        RETRACTED,
        _json({"returned": list(m.returned), "started": list(m.started)}),
    ],
    Cancel: lambda m: [TAG, CANCEL, _task_and_client(m.task_id, m.client)],
    Cancelled: lambda m: [TAG, CANCELLED, _json({"task_id": m.task_id, "was": m.was})],
    Fetch: lambda m: [TAG, FETCH, _task_and_client(m.task_id, m.client)],
    Waiting: lambda m: [TAG, WAITING, _json({"task_id": m.task_id, "waiting": m.waiting})],
    Stop: lambda m: [TAG, STOP, _json({"task_ids": list(m.task_ids)})],
    Stored: lambda m: [TAG, STORED, _json({"results": m.results})],
    Batch: _encode_batch,
}
