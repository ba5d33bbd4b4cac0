"""The spans of broker/tracing.py, recorded by the OpenTelemetry SDK's in-memory exporter:
the broker's (queue, one dispatch per attempt), the client's (submit), and the switch that
keeps tracing off unless the environment asks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker import protocol as p
from broker.tracing import BrokerSpans, ClientSpans, Tracing, asked

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NODE = b"\x00node"


@pytest.fixture
def recorded() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # this test's own: the global provider stays untouched
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider.get_tracer("test")), exporter
    provider.shutdown()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_the_broker_spans_a_queue_wait_and_each_attempt(
    recorded: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    spans = BrokerSpans(tracing)
    spans.received(p.Execute(p.TaskSpec("t", "add", b"[2,3]", traceparent=TP)))
    first = spans.sending(NODE, p.Run("t", "add", b"[2,3]", 1, None, None, TP))
    second = spans.sending(NODE, p.Run("t", "add", b"[2,3]", 2, None, None, TP))
    assert isinstance(first, p.Run) and isinstance(second, p.Run)
    assert first.traceparent != TP and second.traceparent not in (TP, first.traceparent)
    spans.sending(b"client", p.TaskCompleted("t", 0, b"5", None, 2))
    assert len(spans) == 0  # nothing kept once answered
    done = exporter.get_finished_spans()
    [queued] = named(done, "ztb.queue add")
    dispatches = named(done, "ztb.dispatch add")
    assert [d.attributes["ztb.task.attempt"] for d in dispatches] == [1, 2]  # type: ignore[index]
    trace_id = int(TP.split("-")[1], 16)
    parent_id = int(TP.split("-")[2], 16)
    for span in (queued, *dispatches):
        assert span.context is not None and span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == parent_id
        assert span.attributes is not None and span.attributes["ztb.task.id"] == "t"
    assert dispatches[1].attributes["ztb.task.exit_code"] == 0  # type: ignore[index]
    assert dispatches[1].attributes["ztb.node"] == NODE.hex()  # type: ignore[index]
    assert second.traceparent is not None
    assert f"{dispatches[1].context.span_id:016x}" in second.traceparent


def test_a_task_answered_without_running_ends_its_queue_span_as_an_error(
    recorded: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    spans = BrokerSpans(tracing)
    batch = p.Batch((p.Execute(p.TaskSpec("a", "f", b"[]", traceparent=TP)),))
    spans.received(batch)
    error = p.ErrorInfo("Expired", "not started")
    spans.sending(b"client", p.Batch((p.TaskCompleted("a", p.EXIT_EXPIRED, b"null", error, 0),)))
    [queued] = exporter.get_finished_spans()
    assert queued.name == "ztb.queue f" and not queued.status.is_ok
    assert queued.attributes is not None and queued.attributes["ztb.task.exit_code"] == 125


def test_untraced_tasks_are_passed_through_untouched(
    recorded: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    spans = BrokerSpans(tracing)
    spans.received(p.Execute(p.TaskSpec("u", "f", b"[]")))
    run = p.Run("u", "f", b"[]")
    assert spans.sending(NODE, run) is run
    spans.sending(b"client", p.TaskCompleted("u", 0))
    assert exporter.get_finished_spans() == () and len(spans) == 0


def test_the_client_spans_each_task_from_submit_to_answer(
    recorded: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = recorded
    spans = ClientSpans(tracing)
    with tracing.tracer.start_as_current_span("web request") as request:
        spec = spans.submitted(p.TaskSpec("t", "add", b"[2,3]"))
        again = spans.submitted(p.TaskSpec("t", "add", b"[2,3]"))  # a resend: the same span
    assert spec.traceparent is not None and again.traceparent == spec.traceparent
    spans.answered(p.TaskCompleted("t", 0, b"5"))
    spans.submitted(p.TaskSpec("r", "add", b"[]"))
    spans.refused("r", "conflict")
    done = exporter.get_finished_spans()
    submits = named(done, "ztb.submit add")
    assert len(submits) == 2
    assert submits[0].parent is not None
    assert submits[0].parent.span_id == request.get_span_context().span_id
    assert submits[0].status.is_ok and not submits[1].status.is_ok


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert asked(environ) is on
