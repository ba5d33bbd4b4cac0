"""`zsubmit`: run one task on the broker from the shell and print its result."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from broker.protocol import (
    DEFAULT_BROKER_URL,
    EXIT_EXPIRED,
    EXIT_NODE_LOST,
    EXIT_TIMEOUT,
    EXIT_WORKER_CRASHED,
    PRIORITY_DEFAULT,
    TaskCompleted,
    dumps_payload,
    loads_payload,
)
from broker.protocol.version import package_version
from client.api import Client
from client.errors import BrokerError, BrokerTimeout, ClientError, TaskFailed
from client.options import MAX_TASK_TIMEOUT

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
  zsubmit --task-timeout 5 sleep 60  the node stops it after 5 s (task exit code 124)

Two different timeouts: --task-timeout limits how long the function may run on its
node; --timeout limits how long zsubmit waits for the answer.
"""

EPILOG = """\b
Exit codes:
  0  the task succeeded; its result is on stdout
  1  the task failed ("error: FUNCTION failed (exit N, ErrorType): message"
     on stderr, or "FUNCTION timed out after S s (exit 124, Timeout)", etc.;
     with --json the answer is on stdout too), or the broker refused the
     request
  2  bad command line (an option out of range, a --broker URL that is not
     an endpoint)
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
        "result": loads_payload(completed.result),
        "error": error,
        "attempts": completed.attempts,
    }
    typer.echo(dumps_payload(body).decode())


def _submit(broker: str, function: str, values: list[Any], wait: float, **task: Any) -> Any:
    timeout = wait if wait > 0 else None
    try:
        with Client(broker, timeout=timeout, **task) as client:
            return client.execute_raw(function, values)
    except BrokerTimeout:
        raise _fail(
            f"no answer from the broker at {broker} within {wait:g} s; "
            "is `zbroker start` running? (use --broker to point elsewhere)",
            EXIT_NO_ANSWER,
        ) from None
    except BrokerError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None
    except ValueError as exc:  # an option out of range, or BadEndpoint: a bad --broker
        raise _fail(str(exc), EXIT_USAGE) from None
    except ClientError as exc:
        raise _fail(str(exc), EXIT_FAILED) from None


# The options, declared once here so that `submit` reads as what it does.
Function = Annotated[
    str, typer.Argument(metavar="FUNCTION", help="Name of the function a node offers.")
]
Args = Annotated[
    list[str] | None,
    typer.Argument(metavar="ARG", help="Arguments: JSON if they parse as JSON, else strings."),
]
Broker = Annotated[str, typer.Option("--broker", metavar="URL", help="Endpoint of the broker.")]
Priority = Annotated[
    int,
    typer.Option(min=0, max=9, metavar="P", help="0 to 9; queued tasks run 9 first."),
]
Retries = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=100,
        metavar="N",
        help="Extra attempts if the function raises or its node dies, with growing waits "
        "between them (default: the broker's, 3 unless zbroker start --retries says).",
    ),
]
QueueTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        metavar="S",
        help="Seconds the task may wait in the broker's queue for a free node; after that it "
        "fails with exit code 125 (Expired) instead of running late.",
    ),
]
TaskTimeout = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        max=MAX_TASK_TIMEOUT,
        metavar="S",
        help="Seconds the function may run on its node (each attempt); after that the node "
        "stops it and the task fails with exit code 124 (Timeout). At most 604800 (7 days). "
        "Default: the broker's (zbroker start --task-timeout), else no limit. Not how long "
        "zsubmit waits: that is --timeout.",
    ),
]
Wait = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0,
        metavar="S",
        help="Seconds zsubmit waits for the answer, resends included; 0 waits forever. "
        "Not a limit on the function: that is --task-timeout.",
    ),
]


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"zsubmit {package_version()}")
        raise typer.Exit(EXIT_OK)


Version = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version of zsubmit and exit.",
    ),
]
JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the whole answer as one JSON object "
        "{task_id, exit_code, result, error, attempts}, even when the task failed.",
    ),
]


@app.command(
    cls=_SubmitCommand,
    help=HELP,
    epilog=EPILOG,
    # No -h: `zsubmit echo -hello` would print the help instead of refusing "-hello".
    context_settings={"ignore_unknown_options": True},
)
def submit(
    ctx: typer.Context,
    function: Function,
    args: Args = None,
    broker: Broker = DEFAULT_BROKER_URL,
    priority: Priority = PRIORITY_DEFAULT,
    retries: Retries = None,
    queue_timeout: QueueTimeout = None,
    task_timeout: TaskTimeout = None,
    timeout: Wait = 30.0,
    json_output: JsonOutput = False,
    version: Version = False,
) -> None:
    values = _arguments(ctx, function, args or [])
    _warn_short_wait(timeout, task_timeout)
    completed = _submit(
        broker,
        function,
        values,
        timeout,
        priority=priority,
        retries=retries,
        queue_timeout=queue_timeout,
        task_timeout=task_timeout,
    )
    try:
        if json_output:
            _print_json(completed)
        elif completed.exit_code == 0:
            typer.echo(dumps_payload(loads_payload(completed.result)).decode())
    except ValueError as exc:
        raise _fail(f"the result of {function} is not valid JSON: {exc}", EXIT_FAILED) from None
    if completed.exit_code != 0:
        failure = TaskFailed.from_completed(function, completed, task_timeout)
        raise _fail(f"{failure}{_HINTS.get(completed.exit_code, '')}", EXIT_FAILED)


# What to do about the failures the broker reports (rather than the function).
_HINTS = {
    EXIT_TIMEOUT: "; give it longer with --task-timeout S",
    EXIT_EXPIRED: "; start more nodes for it, or let it wait longer with --queue-timeout S",
    EXIT_NODE_LOST: "; check the nodes with `zbroker status`, or allow more --retries N",
    EXIT_WORKER_CRASHED: "; the function killed its process: see that node's log",
}


def _warn_short_wait(wait: float, task_timeout: float | None) -> None:
    if wait > 0 and task_timeout is not None and task_timeout >= wait:
        typer.echo(
            f"warning: --timeout {wait:g} s is not longer than --task-timeout "
            f"{task_timeout:g} s, so zsubmit may stop waiting before the task ends; "
            "raise --timeout (0 waits forever)",
            err=True,
        )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="zsubmit: %(levelname)s: %(message)s")
    app(prog_name="zsubmit")


if __name__ == "__main__":
    main()
