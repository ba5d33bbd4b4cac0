"""`zsubmit`: run one task on the broker from the shell and print its result."""

from __future__ import annotations

import logging
import re
from typing import Any

import typer
from typer.core import TyperCommand

from broker.protocol import (
    DEFAULT_BROKER_URL,
    PRIORITY_DEFAULT,
    TaskCompleted,
    dumps_payload,
    loads_payload,
)
from client.api import Client
from client.errors import BrokerError, BrokerTimeout, ClientError, TaskFailed

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
_RAW_ARGS = "zsubmit.raw_args"
# Starts like an option and cannot be a number: most likely a mistyped option.
_OPTION_LIKE = re.compile(r"-[^\d.]")

HELP = """Run FUNCTION(ARG, ...) on a node through the broker and print its result as JSON.

Each ARG is read as JSON when it parses as JSON, else taken as a plain string.
String arguments that start with "-" go after `--`. Examples:

\b
  zsubmit multiply 5 10              sends 5 and 10, prints 50
  zsubmit multiply -3 2.5            negative numbers are arguments too
  zsubmit hash_text hello            sends the string "hello"
  zsubmit echo '"42"'                sends the string "42", not the number
  zsubmit sum_list '[1, 2, 3]'       sends a list
  zsubmit echo -- -x                 sends the string "-x"
  zsubmit --json multiply 5 10       prints {task_id, exit_code, result, error, attempts}
"""

EPILOG = """\b
Exit codes:
  0  the task succeeded; its result is on stdout
  1  the task failed ("error: FUNCTION failed (exit N, ErrorType): message"
     on stderr; with --json the answer is on stdout too), or the broker
     refused the request
  2  bad command line
  3  no answer from the broker within --timeout
"""

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


class _SubmitCommand(TyperCommand):
    """Keeps the raw command line so `main` can tell which ARGs came after `--`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_RAW_ARGS] = list(args)
        rest: list[str] = super().parse_args(ctx, args)
        return rest


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def parse_argument(text: str) -> Any:
    """JSON when `text` parses as JSON, else the string itself."""
    try:
        return loads_payload(text.encode())
    except ValueError:
        return text


def _arguments(ctx: typer.Context, function: str, args: list[str]) -> list[Any]:
    """The ARGs decoded; refuses option-like words that did not come after `--`."""
    raw: list[str] = ctx.meta.get(_RAW_ARGS, [])
    literal = len(raw) - raw.index("--") - 1 if "--" in raw else 0
    words = [function, *args]
    # Negative numbers must pass as ARGs, so unknown options reach us as ARGs too.
    for word in words[: max(0, len(words) - literal)]:
        if _OPTION_LIKE.match(word):
            raise _fail(
                f"no such option: {word} (see zsubmit --help; to send it as a string "
                f"argument, put it after --: zsubmit FUNCTION -- {word})",
                EXIT_USAGE,
            )
    return [parse_argument(arg) for arg in args]


def _print_json(completed: TaskCompleted) -> None:
    error = None if completed.error is None else completed.error.to_json()
    body = {
        "task_id": completed.task_id,
        "exit_code": completed.exit_code,
        "result": loads_payload(completed.payload),
        "error": error,
        "attempts": completed.attempts,
    }
    typer.echo(dumps_payload(body).decode())


def _submit(broker: str, function: str, values: list[Any], wait: float, **task: Any) -> Any:
    timeout = wait if wait > 0 else None
    try:
        with Client(broker, timeout=timeout, **task) as client:
            return client.submit(function, values)
    except BrokerTimeout:
        raise _fail(
            f"no answer from the broker at {broker} within {wait:g} s; "
            "is `zbroker start` running? (use --broker to point elsewhere)",
            EXIT_NO_ANSWER,
        ) from None
    except BrokerError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except ClientError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None


@app.command(
    cls=_SubmitCommand,
    help=HELP,
    epilog=EPILOG,
    # No -h: `zsubmit echo -hello` would print the help instead of refusing "-hello".
    context_settings={"ignore_unknown_options": True},
)
def submit(
    ctx: typer.Context,
    function: str = typer.Argument(
        ..., metavar="FUNCTION", help="Name of the function a node offers."
    ),
    args: list[str] | None = typer.Argument(
        None, metavar="ARG", help="Arguments: JSON if they parse as JSON, else strings."
    ),
    broker: str = typer.Option(
        DEFAULT_BROKER_URL, "--broker", metavar="URL", help="Endpoint of the broker."
    ),
    priority: int = typer.Option(
        PRIORITY_DEFAULT,
        "--priority",
        min=0,
        max=9,
        metavar="P",
        help="0 to 9; queued tasks run 9 first.",
    ),
    retries: int | None = typer.Option(
        None,
        "--retries",
        min=0,
        max=100,
        metavar="N",
        help="Extra attempts if the function raises or its node dies, with growing waits "
        "between them (default: the broker's, 3 unless zbroker start --retries says).",
    ),
    queue_timeout: float | None = typer.Option(
        None,
        "--queue-timeout",
        min=0.001,
        metavar="S",
        help="Seconds the task may wait in the broker's queue for a free node; after that it "
        "fails with exit code 125 (Expired) instead of running late.",
    ),
    timeout: float = typer.Option(
        30.0,
        "--timeout",
        min=0,
        metavar="S",
        help="Seconds to wait for the result, resends included; 0 waits forever.",
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="Print the whole answer as one JSON object "
        "{task_id, exit_code, result, error, attempts}, even when the task failed.",
    ),
) -> None:
    values = _arguments(ctx, function, args or [])
    completed = _submit(
        broker,
        function,
        values,
        timeout,
        priority=priority,
        retries=retries,
        queue_timeout=queue_timeout,
    )
    try:
        if json_output:
            _print_json(completed)
        elif completed.exit_code == 0:
            typer.echo(dumps_payload(loads_payload(completed.payload)).decode())
    except ValueError as exc:
        raise _fail(f"the result of {function} is not valid JSON: {exc}", EXIT_FAILED) from None
    if completed.exit_code != 0:
        raise _fail(str(TaskFailed.from_completed(function, completed)), EXIT_FAILED)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="zsubmit: %(levelname)s: %(message)s")
    app(prog_name="zsubmit")


if __name__ == "__main__":
    main()
