"""`zsubmit result TASK_ID` and `zsubmit cancel TASK_ID`: a task named by its id alone, of
this zsubmit or any other client (FETCH and CANCEL, protocol.md 3.17-3.19)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from broker.protocol import DEFAULT_BROKER_URL
from broker.security import PeerKeys
from client.cli.common import (
    EXIT_FINISHED,
    Broker,
    BrokerKey,
    ClientId,
    ConnectTimeout,
    Curve,
    LogFile,
    LogFormat,
    LogLevel,
    Version,
    keys_of,
    print_answer,
    print_json,
    reporting,
    start_logging,
)
from client.cli.run import JsonOutput
from client.control import DEFAULT_TIMEOUT, ControlClient
from client.errors import BrokerTimeout
from client.link import DEFAULT_CONNECT_TIMEOUT, ReqLink

ANSWER_TIME = 1.0  # seconds a broker takes, at most, to answer about a task it has answered

TaskId = Annotated[
    str,
    typer.Argument(
        metavar="TASK_ID",
        help="The task's id: printed by zsubmit --detach or --json, or chosen with --task-id.",
    ),
]

RESULT_HELP = """Print the result of task TASK_ID, as zsubmit prints one.

A task that is done is answered at once (the broker keeps answers for a while:
zbroker start --keep-results, 300 s by default); one still queued or running is
waited for, up to --wait S. Any client's task can be asked for by its id.

\b
  zsubmit --detach sleep 5            prints the task id, say 3f2a...
  zsubmit result 3f2a...              exit 3 while it sleeps
  zsubmit result 3f2a... --wait 10    prints 5 once it is done
"""

RESULT_EPILOG = """\b
Exit codes:
  0  the task succeeded; its result is on stdout
  1  the task failed (or was cancelled: exit 130 Cancelled); its error is on
     stderr, with --json its answer on stdout too
  2  bad command line
  3  not done within --wait (still queued or running), or no answer from the
     broker; nothing accepts connections at --broker
  4  the broker knows no task TASK_ID: never submitted, or answered longer ago
     than it keeps answers
"""

CANCEL_HELP = """Cancel task TASK_ID: a queued task never runs, a running one is stopped on its
node, and whoever waits for it gets exit 130 (Cancelled). Prints what the task was.

\b
  zsubmit --detach sleep 600   prints the task id, say 3f2a...
  zsubmit cancel 3f2a...       cancelled task 3f2a... (it was running)
"""

CANCEL_EPILOG = """\b
Exit codes:
  0  cancelled (it was queued, held by a node, or running)
  1  the broker refused (an older broker without CANCEL)
  2  bad command line
  3  no answer from the broker; nothing accepts connections at --broker
  4  the broker knows no task TASK_ID
  5  the task had finished already: nothing to cancel (zsubmit result shows
     its answer)
"""

WHAT_IT_WAS = {
    "queued": "it was queued, and never runs",
    "held": "it was held by a node that had not started it",
    "running": "it was running; its node stops it",
}


def _not_found(task_id: str) -> str:
    return (
        f"the broker knows no task {task_id!r} of this client: never submitted with this "
        "--curve key or --client-id (ids are per client), or answered longer ago than it "
        "keeps answers (zbroker start --keep-results)"
    )


@contextmanager
def _control(
    broker: str, connect_timeout: float, keys: PeerKeys | None, client_id: str | None
) -> Iterator[ControlClient]:
    with ReqLink(broker, connect_timeout=connect_timeout, keys=keys, client_id=client_id) as link:
        yield ControlClient(link)


def result(
    task_id: TaskId,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            metavar="S",
            help="Seconds to wait for a task that is still queued or running (default 0: "
            "only the answer of a task that is done).",
        ),
    ] = 0.0,
    broker: Broker = DEFAULT_BROKER_URL,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
    client_id: ClientId = None,
    json_output: JsonOutput = False,
    log_level: LogLevel = "WARNING",
    log_format: LogFormat = "text",
    log_file: LogFile = None,
    version: Version = False,
) -> None:
    start_logging(log_level, log_format, log_file)

    def not_done(exc: BrokerTimeout) -> str:
        return (
            f"task {task_id} is not done after {wait:g} s: still queued or running (or the "
            f"broker at {exc.url} is not answering); zsubmit result {task_id} --wait S waits "
            "longer"
        )

    missing = _not_found(task_id)
    with (
        reporting(broker, no_answer=not_done, missing=lambda exc: missing),
        _control(broker, connect_timeout, keys_of(curve, broker_key), client_id) as control,
    ):
        completed = control.fetch(task_id, wait + ANSWER_TIME)
    print_answer(completed, f"task {task_id}", json_output)


def cancel(
    task_id: TaskId,
    broker: Broker = DEFAULT_BROKER_URL,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
    client_id: ClientId = None,
    json_output: Annotated[
        bool, typer.Option("--json", help='Print {"task_id": ..., "was": ...} as JSON.')
    ] = False,
    log_level: LogLevel = "WARNING",
    log_format: LogFormat = "text",
    log_file: LogFile = None,
    version: Version = False,
) -> None:
    start_logging(log_level, log_format, log_file)
    missing = _not_found(task_id)
    with (
        reporting(broker, missing=lambda exc: missing),
        _control(broker, connect_timeout, keys_of(curve, broker_key), client_id) as control,
    ):
        was = control.cancel(task_id, DEFAULT_TIMEOUT)
    if json_output:
        print_json({"task_id": task_id, "was": was})
    elif was in WHAT_IT_WAS:
        typer.echo(f"cancelled task {task_id} ({WHAT_IT_WAS[was]})")
    else:
        typer.echo(
            f"task {task_id} had finished already: nothing to cancel "
            f"(zsubmit result {task_id} shows its answer)"
        )
    if was not in WHAT_IT_WAS:
        raise typer.Exit(EXIT_FINISHED)
