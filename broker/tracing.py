"""OpenTelemetry tracing of tasks, off and free unless configured.

A W3C trace context (`traceparent`, protocol.md 3.6) travels EXECUTE -> RUN -> RESULT ->
TASK_COMPLETED, and each process adds its spans to the one trace:

    ztb.submit FUNCTION      client: from the submit to the answer, a child of the caller's
                             current span (a web request's trace continues into its tasks)
      ztb.queue FUNCTION     broker: from acceptance to the first RUN
      ztb.dispatch FUNCTION  broker: one per attempt, from its RUN to its RESULT or answer
        ztb.run FUNCTION     node: the function running, for that attempt

with the task id, function, node, attempt and exit code as attributes (`ztb.task.*`).

It is on only where the OpenTelemetry SDK is installed (`pip install .[otel]`) and the
standard environment asks for traces: OTEL_TRACES_EXPORTER (`console`, `otlp`, or several,
comma-separated; `none` is off) or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); OTEL_SDK_DISABLED=true turns it off, and
OTEL_SERVICE_NAME names the service (by default zbroker, znode, zsubmit). A `Client` in an
application that set up its own tracer provider uses that one. When off, nothing of
OpenTelemetry is imported and each task pays one `is None` test per hop.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from broker.protocol import (
    Batch,
    Execute,
    Message,
    ProtocolError,
    Run,
    TaskCompleted,
    TaskMessage,
    TaskSpec,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

OTLP_EXPORTERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
)
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
INSTALL = "pip install 'zmq-taskbroker[otel]'"


def asked(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (the OTEL_* variables above)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return any(env.get(name) for name in ENDPOINTS)


class Tracing:
    """A tracer, and the W3C trace context going in and out of the protocol's headers."""

    def __init__(self, tracer: Tracer, common: Mapping[str, Any] | None = None) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.common = dict(common or {})  # attributes of every span it starts
        self._propagator = TraceContextTextMapPropagator()

    def start(
        self,
        name: str,
        traceparent: str | None,
        attributes: Mapping[str, Any],
        start_ns: int | None = None,
    ) -> Span:
        """A span, a child of `traceparent` (None: of the current span, if any)."""
        context = None
        if traceparent is not None:
            context = self._propagator.extract({"traceparent": traceparent})
        return self.tracer.start_span(
            name, context=context, attributes={**self.common, **attributes}, start_time=start_ns
        )

    def traceparent(self, span: Span) -> str | None:
        """`span`'s context as a traceparent header value (None if it has none)."""
        from opentelemetry.trace import set_span_in_context

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return carrier.get("traceparent")

    @contextmanager
    def span(
        self, name: str, traceparent: str | None, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        span = self.start(name, traceparent, attributes)
        try:
            yield span
        finally:
            span.end()


def finish(span: Span, exit_code: int, attempts: int | None = None) -> None:
    """End a task's span with its exit code (an error status for a failure)."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("ztb.task.exit_code", exit_code)
    if attempts is not None:
        span.set_attribute("ztb.task.attempts", attempts)
    if exit_code != 0:
        span.set_status(Status(StatusCode.ERROR, f"exit code {exit_code}"))
    span.end()


_process: Tracing | None = None  # this process's, once `configure` has run


def configure(service: str, **attributes: str) -> Tracing | None:
    """Set up this process's tracing from the environment (a program's start: zbroker,
    znode's processes, zsubmit): an SDK tracer provider with the exporters asked for, made
    the global one. None (and a warning, if traces were asked for) when off."""
    global _process
    if not asked():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("OTEL_* asks for traces, but the OpenTelemetry SDK is missing: %s", INSTALL)
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    resource = Resource.create({"service.name": name, **attributes})
    provider = TracerProvider(resource=resource)
    for processor in _processors():
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _process = Tracing(trace.get_tracer("ztb"), attributes)
    return _process


def _processors() -> Iterable[Any]:
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for exporter in (part.strip() for part in names.split(",")):
        if exporter == "console":  # one JSON object per line, written as each span ends
            one_line = ConsoleSpanExporter(
                out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
            )
            yield SimpleSpanProcessor(one_line)
        elif exporter == "otlp":
            otlp = _otlp_exporter()
            if otlp is not None:
                yield BatchSpanProcessor(otlp)
        elif exporter != "none":
            log.warning("OTEL_TRACES_EXPORTER names %r: not one of console, otlp, none", exporter)


def _otlp_exporter() -> Any:
    """An OTLP exporter (HTTP, else gRPC), configured by the OTEL_EXPORTER_OTLP_* variables;
    None, with a warning, when neither package is installed."""
    for module in OTLP_EXPORTERS:
        try:
            return importlib.import_module(module).OTLPSpanExporter()
        except ImportError:
            continue
    log.warning(
        "OTEL_TRACES_EXPORTER asks for otlp, but no OTLP exporter is installed: "
        "pip install opentelemetry-exporter-otlp"
    )
    return None


def process() -> Tracing | None:
    """This process's tracing, as `configure` set it up (None: off)."""
    return _process


def for_client() -> Tracing | None:
    """The tracing a Client uses: its process's; else, where the application set up an SDK
    tracer provider itself, that one; else one from the environment; else None."""
    if _process is not None:
        return _process
    if "opentelemetry" not in sys.modules and not asked():
        return None  # no tracing anywhere in this process: import nothing
    try:
        from opentelemetry import trace
    except ImportError:
        return configure("ztb-client") if asked() else None
    provider = trace.get_tracer_provider()
    if type(provider).__module__.startswith("opentelemetry.sdk"):
        return Tracing(provider.get_tracer("ztb"))
    return configure("ztb-client")


class BrokerSpans:
    """The broker's spans of the tasks whose EXECUTE carried a trace context: `ztb.queue`
    from acceptance to the first RUN, and a `ztb.dispatch` per attempt, from its RUN to its
    RESULT (or the answer); each RUN carries its dispatch span's context to the node. The
    shell calls `received` for each message and `sending` for what it sends."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._accepted: dict[str, tuple[int, str, str]] = {}  # task id: (ns, context, function)
        self._dispatched: dict[str, Span] = {}

    def __len__(self) -> int:
        return len(self._accepted) + len(self._dispatched)

    def received(self, message: Message) -> None:
        if type(message) is Execute:
            self._accept(message)
        elif type(message) is Batch:
            for item in message.items:
                if type(item) is Execute:
                    self._accept(item)

    def _accept(self, execute: Execute) -> None:
        spec = execute.spec
        if spec.traceparent is not None and spec.task_id not in self._accepted:
            self._accepted[spec.task_id] = (time.time_ns(), spec.traceparent, spec.function)

    def sending(self, peer: bytes, message: Message) -> Message:
        """`message` as it leaves for `peer`: a RUN of a traced task with its dispatch
        span's context; the spans a RUN or an answer ends are ended."""
        if isinstance(message, Run):
            return self._run(peer, message)
        if isinstance(message, TaskCompleted):
            self._answered(message)
        elif isinstance(message, Batch):
            return Batch(tuple(self._item(peer, item) for item in message.items))
        return message

    def _item(self, peer: bytes, item: TaskMessage | ProtocolError) -> TaskMessage | ProtocolError:
        if isinstance(item, Run):
            return self._run(peer, item)
        if isinstance(item, TaskCompleted):
            self._answered(item)
        return item

    def _run(self, peer: bytes, run: Run) -> Run:
        if run.traceparent is None:
            return run
        now = time.time_ns()
        attributes = {"ztb.task.id": run.task_id, "ztb.task.function": run.function}
        accepted = self._accepted.pop(run.task_id, None)
        if accepted is not None:
            queued = self._tracing.start(
                f"ztb.queue {run.function}", accepted[1], attributes, accepted[0]
            )
            queued.end(end_time=now)
        earlier = self._dispatched.pop(run.task_id, None)
        if earlier is not None:  # its attempt failed or was lost: the next one starts
            earlier.end(end_time=now)
        span = self._tracing.start(
            f"ztb.dispatch {run.function}",
            run.traceparent,
            {**attributes, "ztb.node": peer.hex(), "ztb.task.attempt": run.attempt},
            now,
        )
        self._dispatched[run.task_id] = span
        return Run(
            run.task_id,
            run.function,
            run.args,
            run.attempt,
            run.task_timeout,
            run.inputs,
            self._tracing.traceparent(span),
        )

    def _answered(self, answer: TaskCompleted) -> None:
        span = self._dispatched.pop(answer.task_id, None)
        accepted = self._accepted.pop(answer.task_id, None)
        if span is None and accepted is not None:  # answered without a RUN: the queue only
            attributes = {"ztb.task.id": answer.task_id, "ztb.task.function": accepted[2]}
            span = self._tracing.start(
                f"ztb.queue {accepted[2]}", accepted[1], attributes, accepted[0]
            )
        if span is not None:
            finish(span, answer.exit_code, answer.attempts)


class ClientSpans:
    """A client's `ztb.submit` spans, one per task from its submit to its answer, each a
    child of the span current where the task was submitted; the EXECUTE carries its context.
    Thread-safe as the client needs: tasks are submitted in the caller's threads and
    answered in the client's I/O thread (a dict's single operations are atomic)."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._open: dict[str, Span] = {}

    def submitted(self, spec: TaskSpec) -> TaskSpec:
        """`spec` with its submit span's trace context (a task id sent again keeps its
        first span)."""
        span = self._open.get(spec.task_id)
        if span is None:
            attributes = {"ztb.task.id": spec.task_id, "ztb.task.function": spec.function}
            span = self._open[spec.task_id] = self._tracing.start(
                f"ztb.submit {spec.function}", None, attributes
            )
        return spec.replaced(traceparent=self._tracing.traceparent(span))

    def answered(self, answer: TaskCompleted) -> None:
        span = self._open.pop(answer.task_id, None)
        if span is not None:
            finish(span, answer.exit_code, answer.attempts)

    def refused(self, task_id: str | None, why: str) -> None:
        """The broker refused the task (ERROR): its span ends as an error."""
        span = None if task_id is None else self._open.pop(task_id, None)
        if span is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, why))
            span.end()
