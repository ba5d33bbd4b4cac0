"""What the zsubmit commands share: exit codes, the options every command takes, how the
client's errors end a command, and how an answer is printed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from broker import logs, tracing
from broker.cli_keys import BrokerKey as BrokerKey, Curve as Curve, keys_of as keys_of
from broker.protocol import (
    ERR_UNKNOWN_COMMAND,
    EXIT_EXPIRED,
    EXIT_NODE_LOST,
    EXIT_TIMEOUT,
    EXIT_WORKER_CRASHED,
    RETRY_ON,
    TaskCompleted,
    dumps_payload,
    loads_payload,
)
from broker.protocol.version import package_version
from client.errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    ClientError,
    MessageTooLarge,
    NotFound,
    TaskFailed,
)
from client.options import check_client_id

# Exit codes. 1 to 3 are those of every command; 4 and 5 answer questions about a task id;
# none is one of the task exit codes of protocol.md 8.2 but 130, which means interrupted in
# both places.
EXIT_OK = 0
EXIT_FAILED = 1  # the task failed, or the broker (or the client, for its size) refused it
EXIT_USAGE = 2  # bad command line
EXIT_NO_ANSWER = 3  # nothing accepts connections at --broker, or no answer in time
EXIT_NOT_FOUND = 4  # the broker knows no task of that id
EXIT_FINISHED = 5  # cancel: the task had finished already, nothing to cancel
EXIT_INTERRUPTED = 130  # Ctrl-C

PROG = "zsubmit"

BROKER_HINT = "use --broker to point elsewhere, --connect-timeout S to wait longer"


def fail(message: str, code: int) -> typer.Exit:
    """Print `message` as an error on stderr; the exit to raise with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


@contextmanager
def reporting(
    url: str,
    *,
    no_answer: Callable[[BrokerTimeout], str] | None = None,
    missing: Callable[[NotFound], str] | None = None,
) -> Iterator[None]:
    """Ends the command when the client raises in the block: nothing reached at `url`, or
    no answer (`no_answer` words it), exits 3; no such task (`missing` words it) 4; a URL
    that is not an endpoint or an option out of range 2; a refusal, or a request over the
    size limit, 1."""
    try:
        yield
    except BrokerUnreachable as exc:
        raise fail(f"{exc} ({BROKER_HINT})", EXIT_NO_ANSWER) from None
    except BrokerTimeout as exc:
        message = no_answer(exc) if no_answer else f"{exc} ({BROKER_HINT})"
        raise fail(message, EXIT_NO_ANSWER) from None
    except NotFound as exc:
        raise fail(missing(exc) if missing else str(exc), EXIT_NOT_FOUND) from None
    except MessageTooLarge as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except BrokerError as exc:
        raise fail(refusal(url, exc), EXIT_FAILED) from None
    except ValueError as exc:  # BadEndpoint, or an option out of range: nothing was sent
        raise fail(str(exc), EXIT_USAGE) from None
    except ClientError as exc:
        raise fail(str(exc), EXIT_FAILED) from None


def refusal(url: str, error: BrokerError) -> str:
    if error.code == ERR_UNKNOWN_COMMAND:
        return (
            f"the broker at {url} does not know this request ({error.message}): it is older "
            "than this zsubmit; upgrade and restart it"
        )
    return str(error)


# What to do about the failures the broker reports (rather than the function).
HINTS = {
    EXIT_TIMEOUT: "; give it longer with --task-timeout S",
    EXIT_EXPIRED: "; start more nodes for it, or let it wait longer with --queue-timeout S",
    EXIT_NODE_LOST: "; check the nodes with `zbroker status`, or allow more --retries N",
    EXIT_WORKER_CRASHED: "; the function killed its process: see that node's log",
}


def answer_json(completed: TaskCompleted) -> dict[str, Any]:
    """The whole answer, as --json prints it."""
    error = None if completed.error is None else completed.error.to_json()
    return {
        "task_id": completed.task_id,
        "exit_code": completed.exit_code,
        "result": loads_payload(completed.result),
        "error": error,
        "attempts": completed.attempts,
    }


def print_answer(
    completed: TaskCompleted,
    what: str,
    json_output: bool,
    task_timeout: float | None = None,
    hints: dict[int, str] | None = None,
) -> None:
    """Print a task's answer: its result on stdout, or (--json) the whole answer; a failure
    (`what` failed ...) on stderr, exit 1."""
    try:
        if json_output:
            print_json(answer_json(completed))
        elif completed.exit_code == 0:
            print_json(loads_payload(completed.result))
    except ValueError as exc:
        raise fail(f"the result of {what} is not valid JSON: {exc}", EXIT_FAILED) from None
    if completed.exit_code != 0:
        failure = TaskFailed.from_completed(what, completed, task_timeout)
        hint = (hints or {}).get(completed.exit_code, "")
        raise fail(f"{failure}{hint}", EXIT_FAILED)


def print_json(value: Any) -> None:
    sys.stdout.write(dumps_payload(value).decode() + "\n")
    sys.stdout.flush()


def start_logging(level: str, log_format: str, log_file: Path | None) -> None:
    """Log as --log-level, --log-format and --log-file say: what the client warns of
    (ignored bad answers, full queues) goes to stderr as `zsubmit: LEVEL: message`. And
    trace as the OTEL_* environment says, if it does (broker.tracing)."""
    logs.configure(level, log_format, log_file, prefix=PROG)
    tracing.configure(PROG)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"{PROG} {package_version()}")
        raise typer.Exit(EXIT_OK)


def retry_on(text: str | None) -> tuple[str, ...] | None:
    """--retry-on as a task carries it: None when not given (the broker's default), else
    the failure names, sorted ("all": every one; "none": no failure but lost nodes and
    crashed node processes)."""
    if text is None:
        return None
    names = {part.strip() for part in text.split(",") if part.strip()}
    if names == {"all"}:
        return tuple(sorted(RETRY_ON))
    if names <= {"none"}:
        return ()
    unknown = names - set(RETRY_ON)
    if unknown:
        choices = ", ".join([*RETRY_ON, "all", "none"])
        raise fail(
            f"--retry-on {text!r}: unknown {', '.join(sorted(unknown))}; give one of {choices}, "
            "or exception,timeout",
            EXIT_USAGE,
        )
    return tuple(sorted(names))


# The options, declared once here so that each command reads as what it does.
Broker = Annotated[str, typer.Option("--broker", metavar="URL", help="Endpoint of the broker.")]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        min=0.001,
        metavar="S",
        help="Seconds to wait for a connection to the broker before saying that nothing "
        "accepts connections at --broker (exit 3).",
    ),
]
ClientId = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="ID",
        callback=lambda value: _client_id(value),
        help="On a broker without --curve, the scope of your task ids (up to 64 characters, "
        'no "|"): another client id cannot fetch or cancel your tasks, and its tasks of the '
        "same id are its own. With --curve your key is the scope.",
    ),
]


def _client_id(value: str | None) -> str | None:
    try:
        return check_client_id(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


Version = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version of zsubmit and exit.",
    ),
]
RetryOn = Annotated[
    str | None,
    typer.Option(
        "--retry-on",
        metavar="exception,timeout|all|none",
        help="Failures retried (up to --retries) besides lost nodes and crashed node "
        "processes: 'exception' (the function raised, exit 1), 'timeout' (it ran past "
        "--task-timeout, exit 124), both, 'all' or 'none'. Default: the broker's "
        "(zbroker start --retry-on, none unless it says).",
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level",
        metavar="LEVEL",
        help="Log what is this severe or more: DEBUG, INFO, WARNING or ERROR.",
    ),
]
LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        metavar="text|json",
        help="'text' for people; 'json' for one JSON object per line (ts, level, logger, message).",
    ),
]
LogFile = Annotated[
    Path | None,
    typer.Option("--log-file", metavar="PATH", help="Also append the log to this file."),
]
