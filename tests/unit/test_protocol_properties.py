"""Property tests of the codec: decoders raise only RemoteProtocolError on any input, they
accept exactly the headers protocol.md's limits allow, valid messages of every type survive
a round trip, and payloads keep integers of any size exact."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from broker import protocol as p
from broker.protocol import DECODERS

CODEC = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COMMANDS = sorted(DECODERS)
FIELDS = sorted(
    {"name", "host", "pid", "functions", "capacity", "node_id", "heartbeat_interval_ms"}
    | {"liveness", "reason", "task_id", "function", "priority", "attempt", "exit_code"}
    | {"error", "attempts", "code", "message", "type", "nodes"}
    | {"timeout_ms", "queue_timeout_ms", "retries", "replaces", "op", "limit", "backlog"}
)

# ----------------------------------------------------------------------------- strategies

names = st.text(min_size=1, max_size=p.MAX_NAME_LENGTH)
texts = st.text(max_size=40)
payloads = st.binary(max_size=64)
error_infos = st.none() | st.builds(p.ErrorInfo, texts, texts)
exit_codes = st.integers(0, 255)
int64 = st.integers(-(2**63), 2**63 - 1)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
timeouts = st.none() | st.integers(1, p.MAX_TASK_TIMEOUT_MS).map(lambda ms: ms / 1000)

header_json = st.recursive(
    st.none() | st.booleans() | int64 | finite_floats | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
payload_json = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


backlogs = st.none() | st.integers(0, p.MAX_BACKLOG)


def _with_some_inputs(spec: p.TaskSpec) -> st.SearchStrategy[p.TaskSpec]:
    """`spec`, or `spec` whose node gets the results of some of its dependencies."""
    if spec.depends_on is None:
        return st.just(spec)
    subsets = st.lists(st.sampled_from(spec.depends_on), min_size=1, unique=True)
    return st.none().map(lambda _: spec) | subsets.map(
        lambda inputs: msgspec.structs.replace(spec, inputs=tuple(inputs))
    )


def _no_show(body: dict[str, Any]) -> dict[str, Any]:
    body.pop("dead_letter", None)
    return body


MESSAGES: dict[type, st.SearchStrategy[Any]] = {
    p.Register: st.builds(
        p.Register,
        names,
        st.text(max_size=p.MAX_NAME_LENGTH),
        st.integers(0, 2**63 - 1),
        st.lists(names, min_size=1, max_size=5, unique=True).map(tuple),
        st.integers(1, 1_000_000),
        st.none() | st.builds(p.Replaces, st.integers(1, 2**63 - 1), texts),
        st.integers(0, p.MAX_PREFETCH),
        st.booleans(),
        adopts_interval=st.booleans(),
    ),
    p.Registered: st.builds(
        p.Registered,
        names,
        st.integers(1, 86_400_000).map(lambda ms: ms / 1000),
        st.integers(1, 1000),
        backlogs,
    ),
    p.Deregister: st.just(p.Deregister()),
    p.Heartbeat: st.builds(
        p.Heartbeat,
        backlogs,
        st.none() | st.integers(1, 86_400_000).map(lambda ms: ms / 1000),
    ),
    p.Disconnect: st.builds(p.Disconnect, texts),
    p.Execute: st.builds(
        p.Execute,
        st.builds(
            p.TaskSpec,
            names,
            names,
            payloads,
            st.integers(0, 9),
            st.none() | st.integers(0, p.MAX_RETRIES),
            st.none() | st.integers(1, p.MAX_QUEUE_TIMEOUT_MS).map(lambda ms: ms / 1000),
            timeouts,
            st.none()
            | st.sets(st.sampled_from(p.RETRY_ON)).map(lambda names: tuple(sorted(names))),
            st.none() | st.lists(names, min_size=1, max_size=4, unique=True).map(tuple),
        ).flatmap(_with_some_inputs),
    ),
    p.Run: st.builds(
        p.Run,
        names,
        names,
        payloads,
        st.integers(1, 1_000_000),
        timeouts,
        st.none() | st.lists(names, min_size=1, max_size=4, unique=True).map(tuple),
    ),
    p.Result: st.builds(
        p.Result, names, exit_codes, payloads, error_infos, st.none() | st.integers(1, 10**6)
    )
    | st.builds(
        p.Result,
        names,
        exit_codes,
        payloads,
        st.builds(p.ErrorInfo, texts, texts),
        st.none() | st.integers(1, 10**6),
        st.booleans(),
    ),
    p.TaskCompleted: st.builds(
        p.TaskCompleted, names, exit_codes, payloads, error_infos, st.integers(0, 1_000_000)
    ),
    p.Status: st.builds(
        p.Status,
        st.sampled_from([p.NODES_BUSIEST, p.NODES_ALL]),
        st.integers(0, 2**63 - 1),
        st.none() | st.integers(0, p.MAX_STATUS_PAGE),
    ),
    p.StatusReply: st.builds(p.StatusReply, st.dictionaries(texts, header_json, max_size=5)),
    p.Dlq: st.builds(
        p.Dlq, st.sampled_from(p.DLQ_OPS), names, st.none() | st.integers(1, 1_000_000)
    ),
    p.DlqReply: st.builds(p.DlqReply, st.dictionaries(texts, header_json, max_size=5).map(_no_show))
    | st.builds(p.DlqReply, st.builds(dict, dead_letter=st.dictionaries(texts, texts)), payloads),
    p.Error: st.builds(p.Error, texts, texts, st.none() | texts),
    p.Retract: st.builds(p.Retract, st.lists(names, min_size=1, max_size=5).map(tuple)),
    p.Retracted: st.builds(
        p.Retracted,
        st.lists(names, max_size=5).map(tuple),
        st.lists(names, max_size=5).map(tuple),
    ),
    p.Cancel: st.builds(p.Cancel, names),
    p.Waiting: st.builds(p.Waiting, names, st.booleans()),
    p.Cancelled: st.builds(
        p.Cancelled,
        names,
        st.sampled_from([p.WAS_QUEUED, p.WAS_HELD, p.WAS_RUNNING, p.WAS_FINISHED]),
    ),
    p.Fetch: st.builds(p.Fetch, names),
    p.Stop: st.builds(p.Stop, st.lists(names, min_size=1, max_size=5).map(tuple)),
}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


# Bodies that are JSON objects carrying the protocol's field names with values of any type:
# these reach the field validators instead of stopping at the JSON parser.
field_objects = st.dictionaries(
    st.sampled_from(FIELDS), header_json | st.integers() | finite_floats, max_size=8
).map(_json_bytes)
garbage_bodies = st.binary(max_size=80) | field_objects | header_json.map(_json_bytes)

# --------------------------------------------------------------------------------- decoding


def _decode_or_refuse(frames: list[bytes]) -> None:
    try:
        msg = p.decode(frames)
    except p.RemoteProtocolError as exc:
        assert exc.code in {
            p.ERR_MALFORMED,
            p.ERR_UNSUPPORTED_VERSION,
            p.ERR_UNKNOWN_COMMAND,
        }
        assert isinstance(exc.message, str) and exc.message
    else:
        assert type(msg) in MESSAGES


@CODEC
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_decode_random_frames_raises_only_protocol_error(frames: list[bytes]) -> None:
    _decode_or_refuse(frames)


@CODEC
@given(
    st.sampled_from([p.TAG, b"ZTB2", b"ZTB", b"ZTB1 "]) | st.binary(max_size=8),
    st.sampled_from(COMMANDS) | st.binary(max_size=16),
    st.lists(st.binary(max_size=40), max_size=3),
)
def test_decode_near_valid_envelopes_raises_only_protocol_error(
    tag: bytes, command: bytes, rest: list[bytes]
) -> None:
    _decode_or_refuse([tag, command, *rest])


@CODEC
@given(st.sampled_from(COMMANDS), garbage_bodies, st.lists(payloads, max_size=2))
def test_decode_garbage_bodies_raises_only_protocol_error(
    command: bytes, body: bytes, rest: list[bytes]
) -> None:
    _decode_or_refuse([p.TAG, command, body, *rest])


def test_decode_deeply_nested_header_is_malformed() -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.decode([p.TAG, p.EXECUTE, b"[" * 100_000, b"[]"])
    assert caught.value.code == p.ERR_MALFORMED


@pytest.mark.parametrize("message_type", list(MESSAGES), ids=lambda t: t.__name__)
def test_round_trip_of_every_message_type(message_type: type) -> None:
    @CODEC
    @given(MESSAGES[message_type])
    def round_trip(msg: p.Message) -> None:
        frames = p.encode(msg)
        assert frames[:2] == [p.TAG, frames[1]] and frames[1] in COMMANDS
        assert p.decode(frames) == msg
        if frames != [p.TAG, p.STATUS]:  # a frame after it would be STATUS's optional body
            assert p.decode([*frames, b"extra"]) == msg

    round_trip()


traceparents = st.none() | st.builds(
    lambda trace, span: f"00-{trace:032x}-{span:016x}-01",
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
)
packed_kinds: dict[type, st.SearchStrategy[Any]] = {
    p.Run: st.builds(
        lambda run, trace: msgspec.structs.replace(run, traceparent=trace),
        MESSAGES[p.Run],
        traceparents,
    ),
    p.TaskCompleted: st.builds(
        lambda answer, trace: msgspec.structs.replace(answer, traceparent=trace),
        MESSAGES[p.TaskCompleted],
        traceparents,
    ),
}


@pytest.mark.parametrize("kind", list(packed_kinds), ids=lambda t: t.__name__)
def test_packed_headers_are_each_header_as_it_is_alone(kind: type) -> None:
    """The broker writes the headers of packed RUNs and TASK_COMPLETEDs in one call: the
    same bytes as the headers written one by one, any text and option included."""

    @CODEC
    @given(st.lists(packed_kinds[kind], min_size=1, max_size=6))
    def same_bytes(messages: list[p.TaskMessage]) -> None:
        frames = p.encode_packed(messages)
        assert frames == p.encode_packed_frames([p.encode(m) for m in messages])
        assert p.decode(frames) == p.Batch(tuple(messages), packed=True)
        alone = frames if len(messages) > 1 else p.encode(messages[0])
        assert list(p.encode_many(list(messages), packed=True)) == [alone]

    same_bytes()


# --------------------------------------------------------------------------------- payloads


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON types all the way down (2**70 == float(2**70) in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@CODEC
@given(payload_json)
def test_payload_round_trip_is_exact(value: Any) -> None:
    data = p.dumps_payload(value)
    assert _same(p.loads_payload(data), value)
    # Plain JSON that any arbitrary-precision parser reads back the same.
    assert _same(json.loads(data), value)
    if not _has_big_int(value):
        assert data == orjson.dumps(value)


@CODEC
@given(st.integers(min_value=-(2**300), max_value=2**300))
def test_payload_integers_of_any_size_are_exact(number: int) -> None:
    data = p.dumps_payload([number, {"n": number}])
    assert data == f'[{number},{{"n":{number}}}]'.encode()
    assert _same(p.loads_payload(data), [number, {"n": number}])


def _has_big_int(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_big_int(v) for v in value)
    if isinstance(value, dict):
        return any(_has_big_int(v) for v in value.values())
    return type(value) is int and not -(2**63) <= value < 2**64


def _mutate(data: bytes, cut: int, insert: bytes) -> bytes:
    cut = cut % (len(data) + 1)
    return data[:cut] + insert + data[cut + 1 :]


almost_json = st.builds(
    _mutate,
    payload_json.map(p.dumps_payload),
    st.integers(0, 10_000),
    st.sampled_from([b"", b"]", b"{", b'"', b"\\", b"\xff", b"NaN", b"1234567890123456789012"]),
)


@CODEC
@given(st.binary(max_size=80) | almost_json)
def test_loads_payload_raises_only_value_error(data: bytes) -> None:
    try:
        p.loads_payload(data)
    except ValueError as exc:
        assert str(exc), "a refusal must say what is wrong"


def test_loads_payload_deep_nesting_with_long_integer_raises_value_error() -> None:
    with pytest.raises(ValueError):
        p.loads_payload(b"[" * 100_000 + b"12345678901234567890")


@CODEC
@given(
    st.fixed_dictionaries(
        {"task_id": names, "function": names},
        optional={
            "priority": st.integers(p.PRIORITY_MIN, p.PRIORITY_MAX),
            "retries": st.none() | st.integers(0, p.MAX_RETRIES),
            "queue_timeout_ms": st.none() | st.integers(1, p.MAX_QUEUE_TIMEOUT_MS),
            "timeout_ms": st.none() | st.integers(1, p.MAX_TASK_TIMEOUT_MS),
            "unknown": header_json,
        },
    )
)
def test_execute_header_fields_in_any_combination(header: dict[str, Any]) -> None:
    """Any subset of the optional fields (as another client may send them) is read; the
    decoder's shortcut for a header without options must not skip one."""
    msg = p.decode([p.TAG, p.EXECUTE, orjson.dumps(header), b"[]"])
    assert isinstance(msg, p.Execute)
    spec = msg.spec
    assert (spec.task_id, spec.function) == (header["task_id"], header["function"])
    assert spec.priority == header.get("priority", p.PRIORITY_DEFAULT)
    assert spec.retries == header.get("retries")
    queue_ms, timeout_ms = header.get("queue_timeout_ms"), header.get("timeout_ms")
    assert spec.queue_timeout == (None if queue_ms is None else queue_ms / 1000)
    assert spec.task_timeout == (None if timeout_ms is None else timeout_ms / 1000)


# The limits as protocol.md states them, written out again here as the model the decoders
# are held to: a header is accepted exactly when every field it carries is allowed.
_ANY_VALUE = st.none() | st.booleans() | st.integers(-2, 1_000_002) | names | st.just("") | texts
Field = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]  # (valid values, invalid ones)
_NAME: Field = (names, st.just("") | st.text(min_size=p.MAX_NAME_LENGTH + 1) | st.integers(0, 9))
# A task id as the broker names it to nodes (RUN, RESULT): scoped, so longer (5.11).
_TASK_REF: Field = (
    st.text(min_size=1, max_size=p.MAX_TASK_REF_LENGTH),
    st.just("") | st.text(min_size=p.MAX_TASK_REF_LENGTH + 1) | st.integers(0, 9),
)
_CLIENT: Field = (
    # (lone surrogates left out, as `texts` leaves them out: JSON cannot carry them)
    st.none()
    | st.text(
        st.characters(blacklist_characters="|", codec="utf-8"),
        min_size=1,
        max_size=64,
    ),
    st.just("") | st.just("a|b") | st.text(min_size=65) | st.integers(0, 9),
)


def _range(low: int, high: int, *, null: bool = False) -> Field:
    """Valid: the limits and values between (and null if allowed); invalid: just past the
    limits, and values of other types."""
    valid: st.SearchStrategy[int | None] = st.sampled_from([low, high]) | st.integers(low, high)
    if null:
        valid = valid | st.none()
    past = st.sampled_from([low - 1, high + 1])
    other = st.booleans() | st.just(float(low)) | texts | (st.nothing() if null else st.none())
    return valid, st.one_of(past, past, past, other)


_ERROR: Field = (
    st.none() | st.builds(dict, type=texts, message=texts),
    st.builds(dict, type=st.integers(0, 1)) | texts | st.just([]),
)
_TIMEOUT_MS = _range(1, p.MAX_TASK_TIMEOUT_MS, null=True)
_REQUIRED = {"task_id", "function", "exit_code"}
# Per command: every field of its header, each valid nine times in ten, or left out.
_SHAPES: dict[bytes, dict[str, Field]] = {
    p.EXECUTE: {
        "function": _NAME,
        "priority": _range(p.PRIORITY_MIN, p.PRIORITY_MAX),
        "retries": _range(0, p.MAX_RETRIES, null=True),
        "queue_timeout_ms": _range(1, p.MAX_QUEUE_TIMEOUT_MS, null=True),
        "timeout_ms": _TIMEOUT_MS,
        "client": _CLIENT,
    },
    p.RUN: {"function": _NAME, "attempt": _range(1, 1_000_000), "timeout_ms": _TIMEOUT_MS},
    p.RESULT: {
        "exit_code": _range(0, 255),
        "error": _ERROR,
        "attempt": _range(1, 1_000_000, null=True),
    },
    p.TASK_COMPLETED: {
        "exit_code": _range(0, 255),
        "attempts": _range(0, 1_000_000),
        "error": _ERROR,
    },
}


@st.composite
def _task_headers(draw: Any, command: bytes) -> tuple[dict[str, Any], set[str]]:
    """A header, and the fields in it that break the limits (or are required and absent)."""
    header: dict[str, Any] = {}
    bad: set[str] = set()
    task_id = _TASK_REF if command in (p.RUN, p.RESULT) else _NAME
    shape = {"task_id": task_id, **_SHAPES[command]}
    for key, (valid, invalid) in shape.items():
        roll = draw(st.integers(0, 19))
        if roll < 2:  # left out, once in ten
            if key in _REQUIRED:
                bad.add(key)
        elif roll < 4:
            header[key] = draw(invalid)
            bad.add(key)
        else:
            header[key] = draw(valid)
    if not draw(st.integers(0, 9)):
        header["unknown"] = draw(_ANY_VALUE)
    return header, bad


@pytest.mark.parametrize("command", sorted(_SHAPES), ids=bytes.decode)
def test_task_headers_are_accepted_exactly_within_the_limits(command: bytes) -> None:
    """Held to the model above: a header with no bad field decodes; one with bad fields is
    refused with an error that names one of them, and carries the task id exactly when the
    task id is readable and valid. A missing payload frame is refused the same way."""

    @settings(CODEC, max_examples=300)
    @given(_task_headers(command), st.integers(0, 9))
    def agree(drawn: tuple[dict[str, Any], set[str]], payload_left_out: int) -> None:
        header, bad = drawn
        frames = [p.TAG, command, orjson.dumps(header), b"[]"]
        if not payload_left_out:
            frames.pop()
        task_id = None if "task_id" in bad else header["task_id"]
        try:
            p.decode(frames)
        except p.RemoteProtocolError as exc:
            assert bad or not payload_left_out, f"refused a valid header: {exc.message}"
            assert exc.task_id == task_id
            if bad:
                assert any(repr(field) in exc.message for field in bad), exc.message
            else:
                assert "needs a frame" in exc.message
        else:
            assert not bad and payload_left_out, f"accepted {header} (bad: {bad})"

    agree()
