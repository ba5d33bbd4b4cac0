"""Golden frames: the exact bytes of every ZTB/1 message, and protocol.md's examples checked
against the codec so that the document and `broker/protocol/` cannot drift apart."""

from __future__ import annotations

import ast
import math
import re
import typing
from pathlib import Path

import pytest

from broker import protocol as p
from broker.protocol import DECODERS

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "protocol.md"

T = b"ZTB1"  # the tag frame, hard-coded on purpose: a change of version must show here

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # a W3C traceparent

GOLDEN: list[tuple[p.Message, list[bytes]]] = [
    (p.Register("node-a", "worker1", 4242, ("add", "multiply"), 4),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,'
                      b'"functions":["add","multiply"],"capacity":4}']),
    (p.Register("node-a.0", "worker1", 4243, ("add",), 1,
                p.Replaces(4242, "killed by signal 11 (SIGSEGV)")),
     [T, b"REGISTER", b'{"name":"node-a.0","host":"worker1","pid":4243,"functions":["add"],'
                      b'"capacity":1,"replaces":{"pid":4242,'
                      b'"reason":"killed by signal 11 (SIGSEGV)"}}']),
    (p.Register("node-a", "worker1", 4242, ("add", "multiply"), 1, None, 16),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,'
                      b'"functions":["add","multiply"],"capacity":1,"prefetch":16}']),
    (p.Registered("node-1", 1.0, 3),
     [T, b"REGISTERED", b'{"node_id":"node-1","heartbeat_interval_ms":1000,"liveness":3}']),
    (p.Registered("node-2", 0.25, 5),
     [T, b"REGISTERED", b'{"node_id":"node-2","heartbeat_interval_ms":250,"liveness":5}']),
    (p.Registered("node-3", 1.0, 3, 17),
     [T, b"REGISTERED",
      b'{"node_id":"node-3","heartbeat_interval_ms":1000,"liveness":3,"backlog":17}']),
    (p.Deregister(), [T, b"DEREGISTER"]),
    (p.Heartbeat(), [T, b"HEARTBEAT"]),
    (p.Heartbeat(17), [T, b"HEARTBEAT", b'{"backlog":17}']),
    (p.Heartbeat(0), [T, b"HEARTBEAT", b'{"backlog":0}']),
    (p.Heartbeat(0, 4.768),
     [T, b"HEARTBEAT", b'{"heartbeat_interval_ms":4768,"backlog":0}']),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, adopts_interval=True),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"adopts_interval":true}']),
    (p.Disconnect("broker shutting down"),
     [T, b"DISCONNECT", b'{"reason":"broker shutting down"}']),
    (p.Execute(p.TaskSpec("1234", "multiply", b"[5,10]", 5)),
     [T, b"EXECUTE", b'{"task_id":"1234","function":"multiply","priority":5}', b"[5,10]"]),
    (p.Execute(p.TaskSpec("t-\u00e9", "sum", b"[1180591620717411303424]", 9)),
     [T, b"EXECUTE", b'{"task_id":"t-\xc3\xa9","function":"sum","priority":9}',
      b"[1180591620717411303424]"]),
    (p.Execute(p.TaskSpec("r", "f", b"[]", 5, retries=0)),
     [T, b"EXECUTE", b'{"task_id":"r","function":"f","priority":5,"retries":0}', b"[]"]),
    (p.Execute(p.TaskSpec("q", "f", b"[]", 5, queue_timeout=1.5)),
     [T, b"EXECUTE", b'{"task_id":"q","function":"f","priority":5,"queue_timeout_ms":1500}',
      b"[]"]),
    (p.Execute(p.TaskSpec("s", "sleep", b"[10]", 5, task_timeout=1.0)),
     [T, b"EXECUTE", b'{"task_id":"s","function":"sleep","priority":5,"timeout_ms":1000}',
      b"[10]"]),
    (p.Run("1234", "multiply", b"[5,10]", 2),
     [T, b"RUN", b'{"task_id":"1234","function":"multiply","attempt":2}', b"[5,10]"]),
    (p.Run("s", "sleep", b"[10]", 1, 1.0),
     [T, b"RUN", b'{"task_id":"s","function":"sleep","attempt":1,"timeout_ms":1000}', b"[10]"]),
    (p.Result("1234", 0, b"50"),
     [T, b"RESULT", b'{"task_id":"1234","exit_code":0,"error":null}', b"50"]),
    (p.Result("1234", 0, b"50", None, 2),
     [T, b"RESULT", b'{"task_id":"1234","exit_code":0,"error":null,"attempt":2}', b"50"]),
    (p.Result("1234", 1, b"null", p.ErrorInfo("ZeroDivisionError", "division by zero")),
     [T, b"RESULT", b'{"task_id":"1234","exit_code":1,'
                    b'"error":{"type":"ZeroDivisionError","message":"division by zero"}}',
      b"null"]),
    (p.TaskCompleted("1234", 0, b"50", None, 1),
     [T, b"TASK_COMPLETED", b'{"task_id":"1234","exit_code":0,"error":null,"attempts":1}',
      b"50"]),
    (p.TaskCompleted("x", 127, b"null", p.ErrorInfo("UnknownFunction", "no node"), 0),
     [T, b"TASK_COMPLETED", b'{"task_id":"x","exit_code":127,'
                            b'"error":{"type":"UnknownFunction","message":"no node"},'
                            b'"attempts":0}', b"null"]),
    (p.Batch((p.Execute(p.TaskSpec("a", "noop", b"[]", 5)),
              p.Execute(p.TaskSpec("b", "noop", b"[1]", 9)))),
     [T, b"EXECUTE", b'{"task_id":"a","function":"noop","priority":5}', b"[]",
      b'{"task_id":"b","function":"noop","priority":9}', b"[1]"]),
    (p.Status(), [T, b"STATUS"]),
    (p.Status(p.NODES_ALL, 1000, 500),
     [T, b"STATUS", b'{"nodes":"all","offset":1000,"limit":500}']),
    (p.Status(limit=10), [T, b"STATUS", b'{"limit":10}']),
    (p.Status(stored=True), [T, b"STATUS", b'{"stored":true}']),
    (p.StatusReply({"nodes": [], "queued": 3, "running": 0, "counters": {"received": 7}}),
     [T, b"STATUS_REPLY", b'{"nodes":[],"queued":3,"running":0,"counters":{"received":7}}']),
    (p.Dlq("list", limit=50), [T, b"DLQ", b'{"op":"list","limit":50}']),
    (p.Dlq("replay", "1234"), [T, b"DLQ", b'{"op":"replay","task_id":"1234"}']),
    (p.DlqReply({"replayed": ["1234"], "missing": []}),
     [T, b"DLQ_REPLY", b'{"replayed":["1234"],"missing":[]}']),
    (p.DlqReply({"dead_letter": {"task_id": "1234"}}, b"[5,10]"),
     [T, b"DLQ_REPLY", b'{"dead_letter":{"task_id":"1234"}}', b"[5,10]"]),
    (p.Retract(("t-17", "t-16")), [T, b"RETRACT", b'{"task_ids":["t-17","t-16"]}']),
    (p.Retracted(("t-17",), ("t-16",)),
     [T, b"RETRACTED", b'{"returned":["t-17"],"started":["t-16"]}']),
    (p.Execute(p.TaskSpec("report", "summarise", b'["2026-12"]',
                          depends_on=("load-1", "load-2"))),
     [T, b"EXECUTE", b'{"task_id":"report","function":"summarise","priority":5,'
                     b'"depends_on":["load-1","load-2"]}', b'["2026-12"]']),
    (p.Execute(p.TaskSpec("b", "multiply", b'[{"$result":"a"},10]',
                          depends_on=("a",), inputs=("a",))),
     [T, b"EXECUTE", b'{"task_id":"b","function":"multiply","priority":5,'
                     b'"depends_on":["a"],"inputs":["a"]}', b'[{"$result":"a"},10]']),
    (p.Run("b", "multiply", b'{"arguments":[{"$result":"a"},10],"results":[3]}', 1, None,
           ("a",)),
     [T, b"RUN", b'{"task_id":"b","function":"multiply","attempt":1,"inputs":["a"]}',
      b'{"arguments":[{"$result":"a"},10],"results":[3]}']),
    (p.Execute(p.TaskSpec("p/0", "add", b"[1,2]", parent="p")),
     [T, b"EXECUTE", b'{"task_id":"p/0","function":"add","priority":5,"parent":"p"}',
      b"[1,2]"]),
    (p.Waiting("p", True), [T, b"WAITING", b'{"task_id":"p","waiting":true}']),
    (p.Waiting("p", False), [T, b"WAITING", b'{"task_id":"p","waiting":false}']),
    (p.Cancel("1234"), [T, b"CANCEL", b'{"task_id":"1234"}']),
    (p.Cancelled("1234", "running"),
     [T, b"CANCELLED", b'{"task_id":"1234","was":"running"}']),
    (p.Fetch("1234"), [T, b"FETCH", b'{"task_id":"1234"}']),
    (p.Fetch("1234", "alice"), [T, b"FETCH", b'{"task_id":"1234","client":"alice"}']),
    (p.Cancel("1234", "alice"), [T, b"CANCEL", b'{"task_id":"1234","client":"alice"}']),
    (p.Execute(p.TaskSpec("1234", "multiply", b"[5,10]", 5), "alice"),
     [T, b"EXECUTE", b'{"task_id":"1234","function":"multiply","priority":5,"client":"alice"}',
      b"[5,10]"]),
    (p.Run("alice|1234", "multiply", b"[5,10]", 1),
     [T, b"RUN", b'{"task_id":"alice|1234","function":"multiply","attempt":1}', b"[5,10]"]),
    (p.Stop(("1234",)), [T, b"STOP", b'{"task_ids":["1234"]}']),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, None, 0, True,
                (p.Claim("alice|7", 1), p.Claim("8", 2, True))),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"stop":true,"attempts":[{"task_id":"alice|7",'
                      b'"attempt":1},{"task_id":"8","attempt":2,"done":true}]}']),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, None, 0, True, ()),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"stop":true,"attempts":[]}']),
    (p.Registered("node-4", 1.0, 3, None, True, True),
     [T, b"REGISTERED", b'{"node_id":"node-4","heartbeat_interval_ms":1000,"liveness":3,'
                        b'"stored":true,"adopts":true}']),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, None, 4, True,
                (p.Claim("7", 1), p.Claim("9", 1, held=True))),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"prefetch":4,"stop":true,"attempts":[{"task_id":"7",'
                      b'"attempt":1},{"task_id":"9","attempt":1,"held":true}]}']),
    (p.Stored(12), [T, b"STORED", b'{"results":12}']),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, None, 64, True),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"prefetch":64,"stop":true}']),
    (p.Execute(p.TaskSpec("r", "fetch_page", b'["https://example.org"]', 5, 2,
                          retry_on=("exception",))),
     [T, b"EXECUTE", b'{"task_id":"r","function":"fetch_page","priority":5,"retries":2,'
                     b'"retry_on":["exception"]}', b'["https://example.org"]']),
    (p.Result("r", 1, b"null", p.ErrorInfo("ConnectionError", "connection refused"), 1, True),
     [T, b"RESULT", b'{"task_id":"r","exit_code":1,"error":{"type":"ConnectionError",'
                    b'"message":"connection refused","retry":true},"attempt":1}', b"null"]),
    (p.Error("malformed", "bad header", "1234"),
     [T, b"ERROR", b'{"code":"malformed","message":"bad header","task_id":"1234"}']),
    (p.Error("too_large", "too big"),
     [T, b"ERROR", b'{"code":"too_large","message":"too big","task_id":null}']),
    (p.Execute(p.TaskSpec("t", "add", b"[2,3]", traceparent=TP)),
     [T, b"EXECUTE", b'{"task_id":"t","function":"add","priority":5,"traceparent":"'
                     + TP.encode() + b'"}', b"[2,3]"]),
    (p.Run("t", "add", b"[2,3]", 1, None, None, TP),
     [T, b"RUN", b'{"task_id":"t","function":"add","attempt":1,"traceparent":"'
                 + TP.encode() + b'"}', b"[2,3]"]),
    (p.Result("t", 0, b"5", None, 1, False, TP),
     [T, b"RESULT", b'{"task_id":"t","exit_code":0,"error":null,"attempt":1,"traceparent":"'
                    + TP.encode() + b'"}', b"5"]),
    (p.TaskCompleted("t", 0, b"5", None, 1, TP),
     [T, b"TASK_COMPLETED", b'{"task_id":"t","exit_code":0,"error":null,"attempts":1,'
                            b'"traceparent":"' + TP.encode() + b'"}', b"5"]),
    (p.Register("node-a", "worker1", 4242, ("add",), 1, packed=True),
     [T, b"REGISTER", b'{"name":"node-a","host":"worker1","pid":4242,"functions":["add"],'
                      b'"capacity":1,"packed":true}']),
    (p.Registered("node-4", 1.0, 3, packed=True),
     [T, b"REGISTERED",
      b'{"node_id":"node-4","heartbeat_interval_ms":1000,"liveness":3,"packed":true}']),
    (p.Batch((p.Result("a", 0, b"1"), p.Result("b", 0, b'"xy"')), packed=True),
     [T, b"RESULT", b'[{"task_id":"a","exit_code":0,"error":null},'
                    b'{"task_id":"b","exit_code":0,"error":null}]', b"[1,4]", b'1"xy"']),
]  # fmt: skip


def test_golden_covers_every_message_type() -> None:
    assert {type(msg) for msg, _ in GOLDEN} == set(typing.get_args(p.Message))


@pytest.mark.parametrize(("msg", "frames"), GOLDEN, ids=lambda v: type(v).__name__)
def test_encode_gives_golden_frames(msg: p.Message, frames: list[bytes]) -> None:
    assert p.encode(msg) == frames


@pytest.mark.parametrize(("msg", "frames"), GOLDEN, ids=lambda v: type(v).__name__)
def test_decode_of_golden_frames(msg: p.Message, frames: list[bytes]) -> None:
    assert p.decode(frames) == msg


# ------------------------------------------------------------------------------ protocol.md

_FRAMES_BLOCK = re.compile(r"^```frames\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _doc_examples() -> list[list[bytes]]:
    blocks = _FRAMES_BLOCK.findall(PROTOCOL_MD.read_text(encoding="utf-8"))
    examples = []
    for block in blocks:
        frames = [ast.literal_eval(line) for line in block.splitlines() if line.strip()]
        assert all(type(frame) is bytes for frame in frames), block
        examples.append(frames)
    return examples


DOC_EXAMPLES = _doc_examples()


def test_protocol_md_has_an_example_of_every_command() -> None:
    commands = {frames[1] for frames in DOC_EXAMPLES}
    assert commands == set(DECODERS)


def test_protocol_md_has_a_section_per_command() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for command in DECODERS:
        assert re.search(rf"^### 3\.\d+ {command.decode()} \(", text, re.MULTILINE), command


@pytest.mark.parametrize("frames", DOC_EXAMPLES, ids=lambda f: f[1].decode())
def test_protocol_md_example_is_what_the_codec_writes(frames: list[bytes]) -> None:
    assert p.encode(p.decode(frames)) == frames


# ---------------------------------------------------------------------- defaults and refusals


def test_absent_optional_fields_take_documented_defaults() -> None:
    register = p.decode([p.TAG, p.REGISTER, b'{"name":"n","functions":["f","f"],"capacity":1}'])
    assert register == p.Register("n", "", 0, ("f",), 1)  # duplicate functions dropped
    long_host = b'{"name":"n","host":"' + b"h" * 300 + b'","functions":["f"],"capacity":1}'
    assert p.decode([p.TAG, p.REGISTER, long_host]) == p.Register("n", "h" * 256, 0, ("f",), 1)
    execute = p.decode([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f"}', b"[]"])
    assert execute == p.Execute(p.TaskSpec("t", "f", b"[]", p.PRIORITY_DEFAULT))
    run = p.decode([p.TAG, p.RUN, b'{"task_id":"t","function":"f"}', b"[]"])
    assert run == p.Run("t", "f", b"[]", 1)
    result = p.decode([p.TAG, p.RESULT, b'{"task_id":"t","exit_code":0}', b"1"])
    assert result == p.Result("t", 0, b"1", None, None)  # no attempt: the node did not say
    done = p.decode([p.TAG, p.TASK_COMPLETED, b'{"task_id":"t","exit_code":0}', b"1"])
    assert done == p.TaskCompleted("t", 0, b"1", None, 1)
    assert p.decode([p.TAG, p.DISCONNECT, b"{}"]) == p.Disconnect("")
    error = p.decode([p.TAG, p.ERROR, b'{"code":"c","message":"m","task_id":5}'])
    assert isinstance(error, p.Error) and error.task_id is None


def test_unknown_fields_whitespace_and_trailing_frames_are_ignored() -> None:
    header = b'{ "extra": [1], "function": "f", "task_id": "t", "priority": 9 }'
    frames = [p.TAG, p.EXECUTE, header, b"[1]", b"trailing"]
    assert p.decode(frames) == p.Execute(p.TaskSpec("t", "f", b"[1]", 9))
    assert p.decode([p.TAG, p.HEARTBEAT, b"anything"]) == p.Heartbeat()
    assert p.decode([p.TAG, p.HEARTBEAT, b'{"backlog":3}', b"x"]) == p.Heartbeat(3)


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"backlog":null}', b'{"backlog":-1}', b'{"backlog":1.5}', b'{"backlog":true}',
     b'{"backlog":"3"}', b'{"backlog":9223372036854775808}', b'{"backlog":1e400}', b"[3]",
     b"{", b"\xff"],
)  # fmt: skip
def test_a_backlog_hint_that_does_not_fit_reads_as_unknown(body: bytes) -> None:
    """The hint is advisory (protocol.md 3.4): it never costs the HEARTBEAT (a sign of life)
    or the REGISTERED that carries it."""
    assert p.decode([p.TAG, p.HEARTBEAT, body]) == p.Heartbeat(None)
    if body.startswith(b"{") and body != b"{":
        registered = b'{"node_id":"n","heartbeat_interval_ms":1000,"liveness":3,' + body[1:]
        registered = registered.replace(b",}", b"}")
        assert p.decode([p.TAG, p.REGISTERED, registered]) == p.Registered("n", 1.0, 3, None)


@pytest.mark.parametrize(
    "value",
    [b"null", b"17", b'"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"',
     b'"00-00000000000000000000000000000000-00f067aa0ba902b7-01"',
     b'"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"',
     b'"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"',
     b'"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"', b'["x"]', b"{}"],
)  # fmt: skip
def test_a_trace_context_that_does_not_parse_reads_as_absent(value: bytes) -> None:
    """Tracing is advisory (protocol.md 5.10): a task is never refused for its context."""
    header = b'{"task_id":"t","function":"add","traceparent":' + value + b"}"
    message = p.decode([p.TAG, p.EXECUTE, header, b"[2,3]"])
    assert message == p.Execute(p.TaskSpec("t", "add", b"[2,3]"))
    run = b'{"task_id":"t","function":"add","traceparent":' + value + b"}"
    assert p.decode([p.TAG, p.RUN, run, b"[]"]) == p.Run("t", "add", b"[]")
    result = b'{"task_id":"t","exit_code":0,"traceparent":' + value + b"}"
    assert p.decode([p.TAG, p.RESULT, result, b"5"]) == p.Result("t", 0, b"5")
    answer = b'{"task_id":"t","exit_code":0,"traceparent":' + value + b"}"
    assert p.decode([p.TAG, p.TASK_COMPLETED, answer, b"5"]) == p.TaskCompleted("t", 0, b"5")


def test_the_largest_backlog_hint_is_read() -> None:
    most = p.decode([p.TAG, p.HEARTBEAT, b'{"backlog":9223372036854775807}'])
    assert most == p.Heartbeat(2**63 - 1)


BAD = p.ERR_MALFORMED

REFUSALS: list[tuple[list[bytes], str, str | None]] = [
    ([], BAD, None),
    ([p.TAG], BAD, None),
    ([b"ZMTP", p.STATUS], BAD, None),
    ([b"ZTB", p.STATUS], BAD, None),
    ([b"ZTB2", p.STATUS], p.ERR_UNSUPPORTED_VERSION, None),
    ([p.TAG, b"execute"], p.ERR_UNKNOWN_COMMAND, None),
    ([p.TAG, p.EXECUTE], BAD, None),
    ([p.TAG, p.EXECUTE, b"[]", b"[]"], BAD, None),
    ([p.TAG, p.EXECUTE, b"{", b"[]"], BAD, None),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f"}'], BAD, "t"),  # the id is readable
    ([b"ZTB01", p.STATUS], BAD, None),  # a version has no leading zeros
    ([b"ZTB0", p.STATUS], BAD, None),
    ([p.TAG, p.EXECUTE, b'{"task_id":"","function":"f"}', b"[]"], BAD, None),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":null}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","priority":10}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","priority":5.0}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","priority":null}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","priority":true}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","inputs":["a"]}', b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","depends_on":["a"],"inputs":["b"]}',
      b"[]"], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","depends_on":["a"],"inputs":[]}',
      b"[]"], BAD, "t"),
    ([p.TAG, p.RUN, b'{"task_id":"t","function":"f","inputs":"a"}', b"[]"], BAD, "t"),
    ([p.TAG, p.WAITING, b'{"task_id":"t","waiting":1}'], BAD, "t"),
    ([p.TAG, p.WAITING, b'{"task_id":"t"}'], BAD, "t"),
    ([p.TAG, p.EXECUTE, b'{"task_id":"t","function":"f","parent":""}', b"[]"], BAD, "t"),
    ([p.TAG, p.RESULT, b'{"task_id":"t","exit_code":256}', b"1"], BAD, "t"),
    ([p.TAG, p.RESULT, b'{"task_id":"t","exit_code":1,"error":"x"}', b"1"], BAD, "t"),
    ([p.TAG, p.REGISTER, b'{"name":"n","functions":[],"capacity":1}'], BAD, None),
    ([p.TAG, p.REGISTER, b'{"name":"n","functions":["f"],"capacity":0}'], BAD, None),
    ([p.TAG, p.REGISTERED, b'{"node_id":"n","heartbeat_interval_ms":0,"liveness":3}'], BAD, None),
    ([p.TAG, p.ERROR, b'{"code":"c"}'], BAD, None),
    ([p.TAG, p.REGISTER, b'{"name":"n","functions":["f"],"capacity":1,'
                         b'"attempts":[{"task_id":"t","attempt":0}]}'], BAD, None),
    ([p.TAG, p.REGISTER, b'{"name":"n","functions":["f"],"capacity":1,'
                         b'"attempts":[{"task_id":"","attempt":1}]}'], BAD, None),
    ([p.TAG, p.REGISTER, b'{"name":"n","functions":["f"],"capacity":1,"attempts":{}}'],
     BAD, None),
    ([p.TAG, p.STORED, b'{"results":-1}'], BAD, None),
    ([p.TAG, p.STORED], BAD, None),
    ([p.TAG, p.STATUS, b'{"nodes":"some"}'], BAD, None),
    ([p.TAG, p.STATUS, b'{"limit":501}'], BAD, None),
    ([p.TAG, p.STATUS, b'{"offset":-1}'], BAD, None),
    ([p.TAG, p.STATUS, b"extra"], BAD, None),
]  # fmt: skip


@pytest.mark.parametrize(("frames", "code", "task_id"), REFUSALS)
def test_refused_frames_raise_protocol_error(
    frames: list[bytes], code: str, task_id: str | None
) -> None:
    with pytest.raises(p.RemoteProtocolError) as caught:
        p.decode(frames)
    assert (caught.value.code, caught.value.task_id) == (code, task_id)
    assert caught.value.message


# -------------------------------------------------------------------------------- payloads

SUM_OF_SQUARES_TO_10_7 = 333333383333335000000  # n(n+1)(2n+1)/6 for n = 10**7

PAYLOADS: list[tuple[object, bytes]] = [
    (2**70, b"1180591620717411303424"),
    (-(2**70), b"-1180591620717411303424"),
    (SUM_OF_SQUARES_TO_10_7, b"333333383333335000000"),
    ([5, 10], b"[5,10]"),
    ([2**64, -(2**63) - 1, 1.5], b"[18446744073709551616,-9223372036854775809,1.5]"),
    (0.1, b"0.1"),
    ([1.5, -2.5e-10, 1e300], b"[1.5,-2.5e-10,1e+300]"),
    ({"a": [True, False, None]}, b'{"a":[true,false,null]}'),
    ("h\u00e9llo \u2713 \U0001f680", '"h\u00e9llo \u2713 \U0001f680"'.encode()),
    (["\u00e9", 2**70], b'["\xc3\xa9",1180591620717411303424]'),
]


@pytest.mark.parametrize(("value", "data"), PAYLOADS)
def test_dumps_payload_golden(value: object, data: bytes) -> None:
    assert p.dumps_payload(value) == data


def _same(a: object, b: object) -> bool:
    """Equal and of the same JSON types all the way down (2**70 == float(2**70) in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize(("value", "data"), PAYLOADS)
def test_loads_payload_golden(value: object, data: bytes) -> None:
    assert _same(p.loads_payload(data), value)


def test_loads_payload_keeps_huge_integers_exact() -> None:
    assert p.loads_payload(b"333333383333335000000") - SUM_OF_SQUARES_TO_10_7 == 0
    assert p.loads_payload(b'{"sum":1180591620717411303424}') == {"sum": 2**70}
    assert type(p.loads_payload(b"[1180591620717411303424]")[0]) is int


def test_dumps_payload_sends_non_finite_floats_as_null() -> None:
    assert p.dumps_payload([math.nan, math.inf, -math.inf]) == b"[null,null,null]"


@pytest.mark.parametrize(
    "data", [b"NaN", b"[Infinity]", b"-Infinity", b"[NaN,1234567890123456789012]", b"", b"\xff"]
)
def test_loads_payload_refuses_what_is_not_json(data: bytes) -> None:
    with pytest.raises(ValueError):
        p.loads_payload(data)


def test_dumps_payload_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(TypeError):
        p.dumps_payload({1, 2})
    with pytest.raises(TypeError):
        p.dumps_payload([object(), 2**70])


# Edge cases of the payload codec's standard-library fallback (integers beyond 64 bits).


def test_non_finite_float_is_null_next_to_a_huge_integer() -> None:
    assert p.dumps_payload([2**70, math.nan]) == b"[1180591620717411303424,null]"


def test_dumps_payload_lone_surrogate_raises_type_error() -> None:
    with pytest.raises(TypeError):
        p.dumps_payload("\ud800")


def test_loads_payload_refuses_overflowing_float_on_either_path() -> None:
    with pytest.raises(ValueError):
        p.loads_payload(b"[1e400]")  # orjson path
    with pytest.raises(ValueError):
        p.loads_payload(b"[1e400,1234567890123456789012]")  # json fallback path


def test_dumps_payload_refuses_non_str_keys_on_both_paths() -> None:
    with pytest.raises(TypeError):
        p.dumps_payload({1: 2})  # orjson path
    with pytest.raises(TypeError):
        p.dumps_payload({1: 2**70})  # standard-library fallback path


def test_a_bad_pair_in_a_batch_is_its_own_error_and_the_others_decode() -> None:
    good = b'{"task_id":"ok","exit_code":0,"error":null}'
    bad = b'{"task_id":"bad","exit_code":999}'
    batch = p.decode([T, b"RESULT", good, b"1", bad, b"2", good.replace(b"ok", b"ok2"), b"3"])
    assert isinstance(batch, p.Batch)
    first, error, third = batch.items
    assert first == p.Result("ok", 0, b"1") and third == p.Result("ok2", 0, b"3")
    assert isinstance(error, p.ProtocolError) and error.task_id == "bad"


def test_a_lone_trailing_frame_after_the_pairs_is_ignored() -> None:
    header = b'{"task_id":"a","function":"f","attempt":1}'
    single = p.decode([T, b"RUN", header, b"[]", b"extra"])
    assert single == p.Run("a", "f", b"[]", 1)
    batch = p.decode([T, b"RUN", header, b"[]", header, b"[2]", b"extra"])
    assert batch == p.Batch((p.Run("a", "f", b"[]", 1), p.Run("a", "f", b"[2]", 1)))


def test_the_packed_form_reads_as_the_pairs_with_the_same_headers_and_payloads() -> None:
    """protocol.md 2.5: frame 2 an array (after JSON whitespace too), sizes cutting the
    payloads, frames after the fifth ignored; the pair form still reads as before."""
    a = b'{"task_id":"a","function":"f","attempt":1}'
    b = b'{"task_id":"b","function":"g","attempt":2}'
    pairs = p.decode([T, b"RUN", a, b"[]", b, b"[1,2]"])
    packed = p.decode([T, b"RUN", b" \n[" + a + b", " + b + b"]", b"[2, 5]", b"[][1,2]", b"x"])
    assert isinstance(pairs, p.Batch) and isinstance(packed, p.Batch)
    assert packed.items == pairs.items and packed.packed and not pairs.packed
    assert p.decode(p.encode(packed)) == packed
    one = p.encode_packed([p.Run("a", "f", b"", 1)])  # an empty payload is a size 0
    assert one[3:] == [b"[0]", b""]
    assert p.decode(one) == p.Batch((p.Run("a", "f", b"", 1),), packed=True)


def test_encode_tasks_packs_several_tasks_only_for_a_reader_of_the_packed_form() -> None:
    one, two = p.Run("a", "f", b"[]", 1), p.Run("b", "g", b"[1]", 2)
    assert p.encode_tasks([one], packed=True) == p.encode(one)  # a task alone: plain
    assert p.encode_tasks([one, two], packed=True) == p.encode_packed([one, two])
    assert p.encode_tasks([one, two], packed=False) == p.encode_batch([one, two])


def test_a_bad_header_in_a_packed_message_is_its_own_error() -> None:
    good = b'{"task_id":"ok","exit_code":0,"error":null}'
    bad = b'{"task_id":"bad","exit_code":999}'
    batch = p.decode([T, b"RESULT", b"[" + good + b"," + bad + b",7]", b"[1,1,0]", b"12"])
    assert isinstance(batch, p.Batch)
    first, error, other = batch.items
    assert first == p.Result("ok", 0, b"1")
    assert isinstance(error, p.ProtocolError) and error.task_id == "bad"
    assert isinstance(other, p.ProtocolError) and other.task_id is None


def test_a_packed_task_its_header_reads_but_its_command_refuses_is_its_own_error() -> None:
    """Every header of the message is valid JSON of the right types, so they are read in
    one call; a rule across fields (inputs among depends_on) still refuses only its task,
    with the message the pair form gives it."""
    good = b'{"task_id":"ok","function":"f"}'
    bad = b'{"task_id":"bad","function":"f","depends_on":["ok"],"inputs":["other"]}'
    batch = p.decode([T, b"EXECUTE", b"[" + good + b"," + bad + b"]", b"[2,2]", b"[][]"])
    alone = p.decode([T, b"EXECUTE", bad, b"[]", good, b"[]"])
    assert isinstance(batch, p.Batch) and isinstance(alone, p.Batch)
    first, error = batch.items
    assert first == p.Execute(p.TaskSpec("ok", "f", b"[]"))
    assert isinstance(error, p.ProtocolError) and error.task_id == "bad"
    assert error.message == alone.items[0].message  # type: ignore[union-attr]
    assert "inputs names 'other', which is not in depends_on" in error.message


@pytest.mark.parametrize(
    ("headers", "sizes", "payloads", "text"),
    [
        (b"[]", b"[]", b"", "0 headers"),
        (b'[{"task_id":"a"}]', b"[1,1]", b"xy", "1 headers, 2 sizes"),
        (b'[{"task_id":"a"}]', b"[3]", b"xy", "summing to 3 and 2 payload bytes"),
        (b'[{"task_id":"a"}', b"[2]", b"xy", "headers frame must be a JSON array"),
        (b'[{"task_id":"a"}]', b"[-1]", b"", "sizes frame must be a JSON array"),
        (b'[{"task_id":"a"}]', b'["2"]', b"xy", "sizes frame must be a JSON array"),
        (b'[{"task_id":"a"}]', b"{}", b"xy", "sizes frame must be a JSON array"),
    ],
)
def test_a_packed_message_whose_frames_disagree_is_refused_whole(
    headers: bytes, sizes: bytes, payloads: bytes, text: str
) -> None:
    with pytest.raises(p.RemoteProtocolError) as caught:
        p.decode([T, b"EXECUTE", headers, sizes, payloads])
    assert caught.value.code == "malformed" and caught.value.task_id is None
    assert text in caught.value.message


def test_a_message_of_more_tasks_than_the_limit_is_refused_whole_in_either_form() -> None:
    """protocol.md 2.4: at most MAX_BATCH_TASKS tasks per message, pairs or packed; more is
    ERROR too_large with task_id null (a lone trailing frame is no task)."""
    header = b'{"task_id":"a","function":"f"}'
    limit = p.MAX_BATCH_TASKS

    def pairs(n: int, trailing: bool = False) -> list[bytes]:
        return [T, b"EXECUTE", *[header, b"[]"] * n, *([b"x"] if trailing else [])]

    def packed(n: int) -> list[bytes]:
        return [
            T,
            b"EXECUTE",
            b"[" + b",".join([header] * n) + b"]",
            b"[0" + b",0" * (n - 1) + b"]",
            b"",
        ]

    for frames in (pairs(limit), pairs(limit, trailing=True), packed(limit)):
        batch = p.decode(frames)
        assert isinstance(batch, p.Batch) and len(batch.items) == limit
    for frames in (pairs(limit + 1), packed(limit + 1)):
        with pytest.raises(p.RemoteProtocolError) as caught:
            p.decode(frames)
        assert caught.value.code == "too_large" and caught.value.task_id is None
        assert f"a message of {limit + 1} EXECUTE tasks exceeds the limit of {limit} tasks" in str(
            caught.value.message
        )


def test_a_batch_holds_one_command() -> None:
    with pytest.raises(p.LocalProtocolError):
        p.encode_batch([p.Run("a", "f", b"[]"), p.Result("a", 0)])
    with pytest.raises(p.LocalProtocolError):
        p.encode(p.Batch((p.ProtocolError("malformed", "x"),)))
    with pytest.raises(p.LocalProtocolError):
        p.encode_packed([p.Run("a", "f", b"[]"), p.Result("a", 0)])


def test_batches_respect_the_task_and_byte_caps() -> None:
    sizes = [1, 1, 1, 1, 1]
    assert [len(b) for b in p.batches(sizes, lambda n: n, max_items=2, max_bytes=100)] == [2, 2, 1]
    assert list(p.batches([60, 30, 20, 200, 5], lambda n: n, max_items=10, max_bytes=100)) == [
        [60, 30],
        [20],
        [200],  # larger than the cap: alone
        [5],
    ]
    assert list(p.batches([], lambda n: n)) == []


def test_a_repeated_key_counts_once_the_last_time() -> None:
    """protocol.md 2.2: senders never repeat a key; a receiver takes the last occurrence,
    as JSON.parse and Python's json do."""
    header = b'{"task_id":"a","function":"f","priority":1,"priority":9}'
    msg = p.decode([p.TAG, p.EXECUTE, header, b"[]"])
    assert isinstance(msg, p.Execute) and msg.spec.priority == 9
    bad_last = b'{"task_id":"a","function":"f","priority":1,"priority":10}'
    with pytest.raises(p.RemoteProtocolError):
        p.decode([p.TAG, p.EXECUTE, bad_last, b"[]"])


def test_refusals_name_the_field_and_its_limits() -> None:
    cases = {
        b'{"task_id":"t","function":"f","priority":10}': (
            "'priority' must be an integer from 0 to 9"
        ),
        b'{"task_id":"","function":"f"}': "'task_id' must be a string of 1 to 256 characters",
        b'{"task_id":"t"}': "'function' must be a string of 1 to 256 characters",
        b"[1]": "header frame must be a JSON object",
    }
    for header, text in cases.items():
        with pytest.raises(p.RemoteProtocolError) as caught:
            p.decode([p.TAG, p.EXECUTE, header, b"[]"])
        assert caught.value.message == text
