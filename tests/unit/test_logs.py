"""broker/logs.py: the JSON lines, the text lines, `configure` and its refusals, and the log
calls about one task that carry its task id and node."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import typer

from broker import logs, protocol as p
from broker.logs import JsonFormatter
from node.lifecycle import Lifecycle
from node.link import BrokerLink
from node.restarts import Restarts
from node.slots import Slots
from tests.unit.core import Core, execute

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("broker.core", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    made.created, made.msecs = 1_700_000_000.25, 250.0
    return made


def test_a_json_line_has_the_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("task %s cancelled while %s", "t1", "queued"))
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "broker.core",
        "message": "task t1 cancelled while queued",
    }


def test_a_json_line_about_a_task_carries_its_task_id_and_node() -> None:
    line = JsonFormatter().format(record("late", task_id="t1", node="n.0"))
    fields = json.loads(line)
    assert (fields["task_id"], fields["node"], fields["message"]) == ("t1", "n.0", "late")
    no_node = json.loads(JsonFormatter().format(record("queued", task_id="t2", node=None)))
    assert no_node["task_id"] == "t2" and "node" not in no_node


def test_a_json_line_carries_the_traceback_of_an_exception() -> None:
    try:
        raise ValueError("broken frame")
    except ValueError:
        made = record("bug while handling %s", "tick")
        made.exc_info = sys.exc_info()
    fields = json.loads(JsonFormatter().format(made))
    assert fields["message"] == "bug while handling tick"
    assert fields["exc"].startswith("Traceback (most recent call last):")
    assert fields["exc"].rstrip().endswith("ValueError: broken frame")


def test_a_message_orjson_refuses_is_still_one_json_line() -> None:
    line = JsonFormatter().format(record("odd id %s", "\ud800"))
    assert json.loads(line)["message"] == "odd id \ud800"


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield root
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_configure_json_writes_json_lines_to_stderr_and_the_file(
    root_logging: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broker.log"
    logs.configure("info", "JSON", path)
    log = logging.getLogger("broker.core")
    log.debug("not shown")
    log.info("task %s cancelled", "t1", extra={"task_id": "t1", "node": "n"})
    for line in (path.read_text(), capsys.readouterr().err):
        [one] = [json.loads(text) for text in line.splitlines()]
        assert TIMESTAMP.match(one["ts"]), one
        assert (one["level"], one["logger"]) == ("INFO", "broker.core")
        assert one["message"] == "task t1 cancelled"
        assert (one["task_id"], one["node"]) == ("t1", "n")


def test_configure_text_shows_the_message_alone(
    root_logging: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.log"
    logs.configure("WARNING", "text", path, prefix="zsubmit")
    logging.getLogger("client.engine").info("not shown")
    logging.getLogger("client.engine").warning("queue full", extra={"task_id": "t1"})
    assert capsys.readouterr().err == "zsubmit: WARNING: queue full\n"
    [line] = path.read_text().splitlines()  # the file keeps times and the logger's name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING client.engine: queue full", line)


@pytest.mark.parametrize(
    ("level", "log_format", "hint", "words"),
    [
        ("LOUD", "text", "--log-level", ["'LOUD'", "DEBUG, INFO, WARNING, ERROR"]),
        ("INFO", "xml", "--log-format", ["'xml'", "text or json"]),
    ],
)
def test_configure_refuses_an_unknown_level_or_format(
    root_logging: logging.Logger, level: str, log_format: str, hint: str, words: list[str]
) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        logs.configure(level, log_format, None)
    assert refused.value.param_hint == hint
    for word in words:
        assert word in refused.value.message


def test_configure_refuses_a_log_file_it_cannot_open(
    root_logging: logging.Logger, tmp_path: Path
) -> None:
    with pytest.raises(typer.BadParameter) as refused:
        logs.configure("INFO", "json", tmp_path / "no-such-dir" / "x.log")
    assert refused.value.param_hint == "--log-file"
    assert "pick a writable path" in refused.value.message


def test_the_broker_logs_a_cancel_with_the_task_id_and_its_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = Core()
    core.handle(b"n", p.Register("gpu1", "h", 1, ("f",), 1, None, 0, True), 0.0)
    core.handle(b"client", execute("t1"), 0.0)
    core.handle(b"client", execute("t2"), 0.0)  # queued behind t1
    with caplog.at_level(logging.INFO, logger="broker.core"):
        core.handle(b"other", p.Cancel("t1"), 0.1)
        core.handle(b"other", p.Cancel("t2"), 0.1)
    about = [
        (r.getMessage(), r.__dict__.get("task_id"), r.__dict__.get("node")) for r in caplog.records
    ]
    assert about == [
        ("task t1 cancelled while running on node gpu1", "t1", "gpu1"),
        ("task t2 cancelled while queued", "t2", None),
    ]


class Link:
    def deregister(self) -> None: ...

    def send_in_order(self, frames: list[bytes]) -> None: ...


class Busy:
    busy = 1

    def expire(self, now: float) -> list[p.Run]:
        return [p.Run("t9", "sleep", b"[10]", 1, 0.5)]


def test_a_node_process_logs_its_restart_with_the_task_id_and_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link, slots = cast(BrokerLink, Link()), cast(Slots, Busy())
    restarts = Restarts(link, Lifecycle(), slots, None, node="gpu1.0")
    with caplog.at_level(logging.WARNING, logger="node.restarts"):
        restarts.expire(now=1.0)
    [line] = caplog.records
    assert "task t9 exceeded its 0.5 s timeout" in line.getMessage()
    assert (line.__dict__["task_id"], line.__dict__["node"]) == ("t9", "gpu1.0")
