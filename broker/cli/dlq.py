"""`zbroker dlq`: look at the broker's dead-letter queue, replay or purge what is in it.

A typer sub-app that broker/cli/__init__.py mounts; the requests go through the client's
ControlClient (broker/cli/control.py).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from broker.cli.control import (
    EXIT_FAILED,
    EXIT_USAGE,
    Broker,
    BrokerKey,
    ConnectTimeout,
    Curve,
    Timeout,
    asking,
    fail,
)
from broker.protocol import DEFAULT_BROKER_URL, MAX_DLQ_LIMIT, dumps_payload
from client.control import DEFAULT_TIMEOUT
from client.link import DEFAULT_CONNECT_TIMEOUT

DEFAULT_LIMIT = 50

EPILOG = """\b
Exit codes: 0 done; 1 no such task in the dead-letter queue, or the broker
refused the request; 2 bad command line (a --broker URL that is not an
endpoint, an option out of range); 3 nothing accepts connections at --broker
within --connect-timeout, or no answer from the broker within --timeout."""

app = typer.Typer(
    help="The dead-letter queue: tasks that failed for good (retries used up, timed out, "
    "expired in the queue, node lost), kept by the broker until they are replayed or purged.",
    no_args_is_help=True,
    add_completion=False,
)

OneTask = Annotated[
    str | None,
    typer.Argument(metavar="TASK_ID", help="The dead letter's task id (zbroker dlq list)."),
]


def _not_in_queue(task_id: str) -> str:
    return (
        f"task {task_id!r} is not in the dead-letter queue; "
        "`zbroker dlq list` shows the task ids that are"
    )


def _target(task_id: str | None, everything: bool, verb: str) -> str | None:
    """The one task to act on, or None for all; refuses an ambiguous or missing choice."""
    if task_id is not None and everything:
        raise fail(f"give a TASK_ID or --all, not both (zbroker dlq {verb} --help)", EXIT_USAGE)
    if task_id is None and not everything:
        raise fail(
            f"give the TASK_ID to {verb} (see zbroker dlq list), "
            f"or --all to {verb} every dead letter",
            EXIT_USAGE,
        )
    return task_id


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _console() -> Console:
    # No markup: error messages and arguments are data, "[1, 0]" must print as it is.
    return Console(markup=False, highlight=False, emoji=False)


def _local_time(failed_at: Any) -> str:
    if not isinstance(failed_at, (int, float)):
        return "?"
    return datetime.fromtimestamp(failed_at).strftime("%Y-%m-%d %H:%M:%S")


def _error_type(entry: dict[str, Any]) -> str:
    error = entry.get("error")
    return str(error.get("type", "")) if isinstance(error, dict) else ""


@app.command(
    "list",
    epilog=EPILOG,
    help="List the dead letters, newest first: task id, function, attempts, exit code, "
    "error type and when it failed (local time).",
)
def list_dead_letters(
    broker: Broker = DEFAULT_BROKER_URL,
    limit: Annotated[
        int,
        typer.Option(min=0, max=MAX_DLQ_LIMIT, metavar="N", help="Show the newest N; 0: all."),
    ] = DEFAULT_LIMIT,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the entries as a JSON array, newest first.")
    ] = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    with asking(
        broker, "DLQ", connect_timeout=connect_timeout, curve=curve, broker_key=broker_key
    ) as control:
        found = control.dead_letters(limit or None, timeout=timeout)
    if json_output:
        _print_json(found.entries)
    else:
        _print_table(found.entries, found.total)


_COLUMNS = ("task id", "function", "attempts", "exit", "error", "failed at")
_FIXED = {"attempts": 8, "exit": 4, "failed at": 16}  # the widest cell of each
_GAP = 2  # between columns


def _cells(entry: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(entry.get("task_id", "")),
        str(entry.get("function", "")),
        str(entry.get("attempts", "")),
        str(entry.get("exit_code", "")),
        _error_type(entry),
        _local_time(entry.get("failed_at"))[:16],  # no seconds: `show` has them
    )


def _widths(rows: list[tuple[str, ...]], width: int) -> list[int]:
    """Column widths for a terminal `width` wide: the fixed columns whole, and the task id
    before function and error type, which are cut to 12 first (their text folds)."""
    natural = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(_COLUMNS)]
    room = width - _GAP * (len(_COLUMNS) - 1) - sum(_FIXED.values())
    flexible = [natural[0], natural[1], natural[4]]
    if sum(flexible) > room:
        flexible[1:] = [min(w, 12) for w in flexible[1:]]
    while sum(flexible) > room and max(flexible) > 8:
        flexible[flexible.index(max(flexible))] -= 1
    task_id, function, error = flexible
    return [task_id, function, _FIXED["attempts"], _FIXED["exit"], error, _FIXED["failed at"]]


def _print_table(entries: list[dict[str, Any]], total: int) -> None:
    console = _console()
    if not entries:
        console.print("The dead-letter queue is empty.")
        return
    rows = [_cells(entry) for entry in entries]
    table = Table(
        title="Dead letters, newest first",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name, width in zip(_COLUMNS, _widths(rows, console.width), strict=True):
        fixed = name in _FIXED
        justify: Literal["left", "right"] = "right" if name in ("attempts", "exit") else "left"
        table.add_column(name, width=width, no_wrap=fixed, overflow="fold", justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if total > len(entries):
        console.print(f"showing the newest {len(entries)} of {total} (--limit 0 shows all)")
    console.print("zbroker dlq show TASK_ID for a task's error and arguments", style="dim")


@app.command(
    epilog=EPILOG,
    help="Show one dead letter: why it failed, and the arguments it was submitted with.",
)
def show(
    task_id: Annotated[
        str, typer.Argument(metavar="TASK_ID", help="The dead letter's task id (zbroker dlq list).")
    ],
    broker: Broker = DEFAULT_BROKER_URL,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help='Print the entry as one JSON object, with its arguments in "args".'
        ),
    ] = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    missing = _not_in_queue(task_id)
    with asking(
        broker, "DLQ", missing, connect_timeout=connect_timeout, curve=curve, broker_key=broker_key
    ) as control:
        entry = control.dead_letter(task_id, timeout=timeout)
    if json_output:
        _print_json(entry)
    else:
        _print_entry(entry)


def _print_entry(entry: dict[str, Any]) -> None:
    error = entry.get("error") if isinstance(entry.get("error"), dict) else {}
    arguments = entry.get("raw_args")
    if arguments is None:
        arguments = dumps_payload(entry.get("args")).decode()
    rows = [
        ("task id", entry.get("task_id")),
        ("function", entry.get("function")),
        ("priority", entry.get("priority")),
        ("attempts", f"{entry.get('attempts')} (retries allowed: {entry.get('retries')})"),
        ("exit code", entry.get("exit_code")),
        ("error", f"{error.get('type', '-')}: {error.get('message', '')}" if error else "-"),
        ("failed at", _local_time(entry.get("failed_at"))),
        ("arguments", arguments),
    ]
    console = _console()
    # soft_wrap: long messages and arguments stay one line each, for grep and copying.
    for name, value in rows:
        console.print(f"{name + ':':<11}{value}", soft_wrap=True)
    tid = entry.get("task_id")
    console.print(
        f"zbroker dlq replay {tid} runs it again; purge forgets it", style="dim", soft_wrap=True
    )


@app.command(
    epilog=EPILOG,
    help="Run a dead letter again (TASK_ID), or all of them (--all).\n\n"
    "Each is queued again under its own task id with a fresh count of attempts. Nobody "
    "waits for its result: a client that wants it submits the same task id again and gets "
    "the replayed run's answer instead of starting a second run.",
)
def replay(
    task_id: OneTask = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter instead of one TASK_ID.")
    ] = False,
    broker: Broker = DEFAULT_BROKER_URL,
    timeout: Timeout = DEFAULT_TIMEOUT,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    target = _target(task_id, everything, "replay")
    with asking(
        broker, "DLQ", connect_timeout=connect_timeout, curve=curve, broker_key=broker_key
    ) as control:
        outcome = control.replay(target, timeout=timeout)
    replayed, missing = outcome["replayed"], outcome["missing"]
    if target is not None:
        if not replayed:
            raise fail(
                f"{_not_in_queue(target)} (a task queued or running again is not replayed)",
                EXIT_FAILED,
            )
        typer.echo(f"replayed {target}: it is queued again")
        return
    typer.echo(f"replayed {len(replayed)} dead letter(s)")
    if missing:
        typer.echo(f"skipped {len(missing)} already queued or running again: {', '.join(missing)}")


@app.command(
    epilog=EPILOG,
    help="Forget a dead letter for good (TASK_ID), or all of them (--all).\n\n"
    "Emptying the whole queue needs --all, so that a forgotten TASK_ID cannot wipe it.",
)
def purge(
    task_id: OneTask = None,
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Purge every dead letter. Required to empty the queue, so that a "
            "forgotten TASK_ID cannot wipe it.",
        ),
    ] = False,
    broker: Broker = DEFAULT_BROKER_URL,
    timeout: Timeout = DEFAULT_TIMEOUT,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    target = _target(task_id, everything, "purge")
    with asking(
        broker, "DLQ", connect_timeout=connect_timeout, curve=curve, broker_key=broker_key
    ) as control:
        purged = control.purge(target, timeout=timeout)
    if target is not None and purged == 0:
        raise fail(_not_in_queue(target), EXIT_FAILED)
    typer.echo(f"purged {purged} dead letter(s)")
