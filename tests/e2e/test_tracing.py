"""OpenTelemetry tracing across the three processes: a client application with a span of its
own submits a task; the broker and the node, configured by the standard environment
(OTEL_TRACES_EXPORTER=console), add their spans to the same trace. Each process writes its
spans as JSON lines (the SDK's console exporter); the test joins them into one trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from client import Client
from tests.e2e.conftest import Cluster

TRACED = {"OTEL_TRACES_EXPORTER": "console"}
# An application that set up OpenTelemetry itself (as a web service would), and submits a
# task while its own span is current.
APPLICATION = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from client import Client

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
    out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\\n")))
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span("web request"):
    with Client(sys.argv[1]) as client:
        print("result", client.execute("add", 2, 3), flush=True)
provider.shutdown()
"""


def spans(text: str) -> list[dict[str, Any]]:
    """The spans of a process's output: its lines that are JSON objects with a context."""
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"context"' in line:
            found.append(orjson.loads(line))
    return found


def by_name(found: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    [span] = [s for s in found if s["name"].startswith(prefix)]
    return span


def test_one_trace_runs_from_the_application_through_broker_and_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.env = TRACED
    cluster.start_broker("--store", "none")
    cluster.start_node(name="n1", functions="math")
    cluster.wait_nodes("n1")
    done = subprocess.run(
        [sys.executable, "-c", APPLICATION, cluster.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path.cwd())},
    )
    assert done.returncode == 0, done.stderr
    assert "result 5" in done.stdout
    assert cluster.broker is not None
    found = spans(done.stdout) + spans(cluster.broker.log()) + spans(cluster.nodes[0].log())
    request = by_name(found, "web request")
    submit = by_name(found, "ztb.submit add")
    queued = by_name(found, "ztb.queue add")
    dispatch = by_name(found, "ztb.dispatch add")
    run = by_name(found, "ztb.run add")
    trace_ids = {span["context"]["trace_id"] for span in found}
    assert trace_ids == {request["context"]["trace_id"]}, "one trace"
    assert submit["parent_id"] == request["context"]["span_id"]
    assert queued["parent_id"] == submit["context"]["span_id"]
    assert dispatch["parent_id"] == submit["context"]["span_id"]
    assert run["parent_id"] == dispatch["context"]["span_id"]
    task_id = submit["attributes"]["ztb.task.id"]
    for span in (submit, queued, dispatch, run):
        assert span["attributes"]["ztb.task.id"] == task_id
        assert span["attributes"]["ztb.task.function"] == "add"
    assert dispatch["attributes"]["ztb.task.attempt"] == run["attributes"]["ztb.task.attempt"] == 1
    assert dispatch["attributes"]["ztb.node"]
    assert run["attributes"]["ztb.node"] == "n1"
    assert submit["attributes"]["ztb.task.exit_code"] == run["attributes"]["ztb.task.exit_code"]
    assert run["attributes"]["ztb.task.exit_code"] == 0
    assert {span["resource"]["attributes"]["service.name"] for span in (queued, run)} == {
        "zbroker",
        "znode",
    }


def test_untraced_tasks_carry_no_trace_context(cluster: Cluster) -> None:
    """Without OTEL_* in the environment nothing traces, and the answers carry no context."""
    cluster.start_broker("--store", "none")
    cluster.start_node(name="n1", functions="math")
    cluster.wait_nodes("n1")
    with Client(cluster.url) as client:
        [answer] = list(client.imap("add", [(1, 2)], answers=True))
    assert answer.exit_code == 0 and answer.traceparent is None
    assert cluster.broker is not None
    assert spans(cluster.broker.log()) == [] and spans(cluster.nodes[0].log()) == []
