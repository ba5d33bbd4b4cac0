"""`zsubmit map FUNCTION [FILE|-]`: one task per line of JSON arguments, pipelined through
`Client.imap`, results as JSON lines in input order."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from broker.protocol import (
    DEFAULT_BROKER_URL,
    PRIORITY_DEFAULT,
    TaskCompleted,
    dumps_payload,
    loads_payload,
)
from client.api import Client
from client.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Broker,
    BrokerKey,
    ClientId,
    ConnectTimeout,
    Curve,
    LogFile,
    LogFormat,
    LogLevel,
    RetryOn,
    Version,
    answer_json,
    fail,
    keys_of,
    reporting,
    retry_on,
    start_logging,
)
from client.cli.run import Function, Priority, QueueTimeout, Retries, TaskTimeout
from client.errors import BrokerError, TaskFailed
from client.link import DEFAULT_CONNECT_TIMEOUT
from client.progress import Progress, shows_on

STDIN = "-"

HELP = """Run FUNCTION once for each line of FILE (or stdin: - or no FILE), each line a
JSON array of arguments, and print the results as JSON lines in input order.

Tasks are pipelined (up to --window in flight), so 100,000 lines take seconds
rather than hours. Blank lines are skipped. A line that fails (not a JSON
array, or its task failed) prints null on stdout, so that output lines stay
in step with the input lines, and "line N: why" on stderr; --json prints the
whole answer of every line instead. On a terminal, stderr shows a progress
bar: done/total (when FILE is a file), rate, time left, failures.

\b
  printf '[2, 10]\\n[3, 3]\\n' | zsubmit map power     prints 1024 and 27
  zsubmit map hash_text texts.jsonl > hashes.jsonl   one ["text"] per line
  zsubmit map --json divide pairs.jsonl              {line, task_id, exit_code,
                                                     result, error, attempts}
"""

EPILOG = """\b
Exit codes:
  0    every line's task succeeded
  1    some lines failed (each is on stderr as "line N: ...")
  2    bad command line (FILE cannot be read, an option out of range)
  3    nothing accepts connections at --broker within --connect-timeout, or
       no answer from the broker for --timeout seconds
  130  interrupted by Ctrl-C (the tasks in flight run on)
"""


_JSON_KINDS = {
    int: "a number",
    float: "a number",
    str: "a string",
    dict: "an object",
    bool: "true or false",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One line of input: a task (`problem` None), or why it is not one."""

    number: int
    problem: str | None = None


def map_tasks(
    function: Function,
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|-",
            help="JSON-lines file of argument arrays, like [2, 10]; - or none: stdin.",
            show_default=False,
        ),
    ] = STDIN,
    broker: Broker = DEFAULT_BROKER_URL,
    priority: Priority = PRIORITY_DEFAULT,
    retries: Retries = None,
    queue_timeout: QueueTimeout = None,
    task_timeout: TaskTimeout = None,
    retry_on_names: RetryOn = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0,
            metavar="S",
            help="Give up when the broker answers nothing for S seconds; 0 waits forever.",
        ),
    ] = 30.0,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
    client_id: ClientId = None,
    window: Annotated[
        int, typer.Option(min=1, max=100_000, metavar="N", help="Tasks in flight at most.")
    ] = 1000,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each line's whole answer: {line, task_id, exit_code, result, error, "
            "attempts}.",
        ),
    ] = False,
    log_level: LogLevel = "WARNING",
    log_format: LogFormat = "text",
    log_file: LogFile = None,
    version: Version = False,
) -> None:
    start_logging(log_level, log_format, log_file)
    keys_of(curve, broker_key)  # a key file that does not load: exit 2 before anything
    stream = _open(source)
    total = _count(source) if source != STDIN and shows_on(sys.stderr) else None
    output = Output(function, json_output, Progress(total, function))
    with reporting(broker), output.progress:
        client = Client(
            broker,
            timeout=timeout or None,
            connect_timeout=connect_timeout,
            priority=priority,
            retries=retries,
            queue_timeout=queue_timeout,
            task_timeout=task_timeout,
            retry_on=retry_on(retry_on_names),
            curve=curve,
            broker_key=broker_key,
            client_id=client_id,
        )
        with client, stream:
            try:
                output.run(client, stream, window)
            except KeyboardInterrupt:
                raise fail(
                    f"interrupted after {output.progress.done:,} lines; the tasks in flight run on",
                    EXIT_INTERRUPTED,
                ) from None
    if output.progress.failed:
        raise fail(
            f"{output.progress.failed:,} of {output.progress.done:,} lines failed", EXIT_FAILED
        )


class Output:
    """Writes each line's outcome in input order: a result on stdout, a failure as null on
    stdout and "line N: why" on stderr (with --json, whole answers on stdout)."""

    def __init__(self, function: str, json_output: bool, progress: Progress) -> None:
        self.function = function
        self.json_output = json_output
        self.progress = progress
        self._lines: deque[Line] = deque()  # read, not yet written

    def run(self, client: Client, stream: BinaryIO, window: int) -> None:
        lines = self._lines
        outcomes = client.imap(
            self.function, self._tasks(stream), window=window, return_exceptions=True, answers=True
        )
        for outcome in outcomes:
            while lines[0].problem is not None:
                self._write_problem(lines.popleft())
            self._write(lines.popleft(), outcome)
        while lines:
            self._write_problem(lines.popleft())
        sys.stdout.flush()

    def _tasks(self, stream: BinaryIO) -> Iterator[list[Any]]:
        """The argument lists of the lines, as imap asks for them; every line read is
        queued in `_lines`, tasks and problems alike, so that they are written in order."""
        for number, text in enumerate(stream, 1):
            if not text.strip():
                continue
            try:
                args = loads_payload(text)
            except ValueError as exc:
                self._lines.append(Line(number, f"not JSON ({exc})"))
                continue
            if not isinstance(args, list):
                found = _JSON_KINDS.get(type(args), "something else")
                problem = f"not a JSON array of arguments, like [2, 10] (found {found})"
                self._lines.append(Line(number, problem))
                continue
            self._lines.append(Line(number))
            yield args

    def _write(self, line: Line, outcome: Any) -> None:
        if isinstance(outcome, TaskCompleted):
            failure = None
            if outcome.exit_code != 0:
                failure = str(TaskFailed.from_completed(self.function, outcome))
            body = answer_json(outcome)
        else:  # refused, by the broker or for its size
            failure = str(outcome)
            code = outcome.code if isinstance(outcome, BrokerError) else "refused"
            error = {"type": code, "message": failure}
            body = _unanswered(getattr(outcome, "task_id", None), error)
        self._emit(line, body, failure)

    def _write_problem(self, line: Line) -> None:
        assert line.problem is not None
        body = _unanswered(None, {"type": "BadLine", "message": line.problem})
        self._emit(line, body, line.problem)

    def _emit(self, line: Line, body: dict[str, Any], failure: str | None) -> None:
        if self.json_output:
            value: Any = {"line": line.number, **body}
        else:
            value = body["result"] if failure is None else None
        sys.stdout.write(dumps_payload(value).decode() + "\n")
        if failure is not None:
            self.progress.say(f"line {line.number}: {failure}")
        self.progress.advance(failure is not None)


def _unanswered(task_id: str | None, error: dict[str, str]) -> dict[str, Any]:
    return {"task_id": task_id, "exit_code": None, "result": None, "error": error, "attempts": 0}


def _open(source: str) -> BinaryIO:
    if source == STDIN:
        return sys.stdin.buffer
    try:
        return Path(source).open("rb")
    except OSError as exc:
        raise fail(
            f"cannot read {source}: {exc.strerror or exc} (give a JSON-lines file, or - for stdin)",
            EXIT_USAGE,
        ) from None


def _count(source: str) -> int | None:
    """The tasks in `source` (its lines that are not blank), when it is a regular file."""
    path = Path(source)
    if not path.is_file():
        return None
    with path.open("rb") as stream:
        return sum(1 for text in stream if text.strip())
