"""How zbroker, znode and zsubmit log: text or JSON lines, on stderr and, if asked, in a file.

`configure` is called by each command with its --log-level, --log-format and --log-file.
The JSON format writes one object per line (`JsonFormatter`): `ts` (UTC, milliseconds),
`level`, `logger`, `message`, and `task_id` and `node` for the lines about one task (the log
calls pass them as `extra=`), and `exc` for a traceback. The text format shows the message
alone, as people read it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import typer

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields a log call may pass with `extra=` for the JSON lines (text shows the message).
TASK_FIELDS = ("task_id", "node")


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(fields, default=str).decode()
        except TypeError:  # a str orjson refuses (a lone surrogate): escape it instead
            return json.dumps(fields, default=str)


def check_level(level: str) -> str:
    """The level's name in capitals; typer.BadParameter if it is not one of LEVELS."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise typer.BadParameter(
            f"unknown log level {level!r}; use one of {', '.join(LEVELS)}",
            param_hint="--log-level",
        )
    return name


def check_format(log_format: str) -> str:
    """The format's name in small letters; typer.BadParameter if it is not one of FORMATS."""
    name = log_format.strip().lower()
    if name not in FORMATS:
        raise typer.BadParameter(
            f"unknown log format {log_format!r}; use {' or '.join(FORMATS)}",
            param_hint="--log-format",
        )
    return name


def configure(
    level: str,
    log_format: str,
    log_file: str | Path | None,
    prefix: str | None = None,
) -> None:
    """Log records of `level` and above to stderr and, if given, appended to `log_file`, in
    `log_format` (text or json), replacing whatever logging was set up before.

    With a `prefix`, text lines on stderr read `PREFIX: LEVEL: message` (for a command whose
    stderr a person reads, as zsubmit's); the file keeps times and logger names. A bad level
    or format, or a file that cannot be opened, raises typer.BadParameter."""
    name = check_level(level)
    json_lines = check_format(log_format) == "json"
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot open log file: {exc}; pick a writable path", param_hint="--log-file"
            ) from None
    for handler in handlers:
        if json_lines:
            handler.setFormatter(JsonFormatter())
        elif prefix is not None and handler is console:
            handler.setFormatter(logging.Formatter(f"{prefix}: %(levelname)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=name, handlers=handlers, force=True)
