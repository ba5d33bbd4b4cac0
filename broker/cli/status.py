"""`zbroker status`: the nodes a running broker knows, what is queued, its counters."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from broker.cli.control import Broker, Timeout, asking
from broker.protocol import DEFAULT_BROKER_URL
from client.control import DEFAULT_TIMEOUT

EPILOG = """\b
Exit codes: 0 done; 1 the broker refused the request, or its answer is not
ZTB/1; 2 bad command line; 3 no answer from the broker within --timeout."""

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the broker's STATUS_REPLY body as JSON.")
]


def status(
    broker: Broker = DEFAULT_BROKER_URL,
    json_output: JsonOutput = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
) -> None:
    """Show the nodes a broker knows, what is queued and running, and its counters."""
    with asking(broker, "STATUS") as control:
        body = control.status(timeout)
    if json_output:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_status(body)


def _print_status(body: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"Nodes (strategy {body.get('strategy', '?')})")
    numbers = ("pid", "load", "held", "done")
    for column in ("name", "host", "pid", "state", "load", "held", "done", "seen", "functions"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for node in sorted(body.get("nodes", []), key=lambda n: str(n.get("name", ""))):
        table.add_row(
            str(node.get("name", "")),
            str(node.get("host", "")),
            str(node.get("pid", "")),
            str(node.get("state", "")),
            f"{node.get('active', 0) - node.get('held', 0)}/{node.get('capacity', 0)}",
            str(node.get("held", 0)),
            str(node.get("completed", "")),
            f"{node.get('last_seen', 0):.1f}s ago",
            _summary(node.get("functions", [])),
        )
    console.print(table)
    console.print(
        f"queued: {body.get('queued', 0)}   running: {body.get('running', 0)}   "
        f"held by nodes: {body.get('held', 0)}   "
        f"dead letters: {body.get('dead_letters', 0)}"
        + ("   (stopping)" if body.get("accepting") is False else "")
    )
    counters = body.get("counters") or {}
    if counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    console.print("(zbroker status --json for ids and every function)", style="dim")


def _summary(functions: list[str], shown: int = 3) -> str:
    more = len(functions) - shown
    return ", ".join(functions[:shown]) + (f" +{more} more" if more > 0 else "")
