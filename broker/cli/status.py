"""`zbroker status`: the nodes a running broker knows (grouped by the znode that runs them),
what is queued, its counters."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console, JustifyMethod
from rich.table import Table

from broker.cli.control import Broker, BrokerKey, ConnectTimeout, Curve, Timeout, asking
from broker.protocol import DEFAULT_BROKER_URL
from client.control import DEFAULT_TIMEOUT
from client.link import DEFAULT_CONNECT_TIMEOUT

EPILOG = """\b
Exit codes: 0 done; 1 the broker refused the request, or its answer is not
ZTB/1; 2 bad command line (a --broker URL that is not an endpoint, an
option out of range); 3 nothing accepts connections at --broker within
--connect-timeout, or no answer from the broker within --timeout."""

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the broker's STATUS_REPLY body as JSON.")
]
AllNodes = Annotated[
    bool,
    typer.Option(
        "--nodes",
        help="List every node process. By default the 50 busiest are listed when there are "
        "more, with the totals of all of them by function; --nodes asks the broker for the "
        "rest, 500 at a time.",
    ),
]


def status(
    broker: Broker = DEFAULT_BROKER_URL,
    json_output: JsonOutput = False,
    all_nodes: AllNodes = False,
    timeout: Timeout = DEFAULT_TIMEOUT,
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    """Show the nodes a broker knows, each znode's processes together, what is queued and
    running, and its counters."""
    with asking(
        broker, "STATUS", connect_timeout=connect_timeout, curve=curve, broker_key=broker_key
    ) as control:
        body = control.status(timeout, all_nodes=all_nodes)
    if json_output:
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_status(body)


def _print_status(body: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"Nodes (strategy {body.get('strategy', '?')})")
    numbers = ("pid", "load", "held", "done")
    for column in ("name", "host", "pid", "state", "load", "held", "done", "seen", "functions"):
        side: JustifyMethod = "right" if column in numbers else "left"
        # The functions give way when the terminal is narrow; the others never wrap.
        table.add_column(column, justify=side, no_wrap=column != "functions")
    groups = znodes(body.get("nodes", []))
    for number, (name, host, processes) in enumerate(groups):
        if number:
            table.add_section()
        if len(processes) == 1:
            table.add_row(*_process_row(processes[0], host=host))
            continue
        # A znode of several processes: its totals, then its processes under it.
        functions = processes[0].get("functions", [])
        table.add_row(
            f"{name} ({len(processes)} processes)",
            host,
            "",
            "",
            f"{_total(processes, 'active') - _total(processes, 'held')}/"
            f"{_total(processes, 'capacity')}",
            str(_total(processes, "held")),
            str(_total(processes, "completed")),
            "",
            _summary(functions),
        )
        for node in processes:
            same = node.get("functions", []) == functions  # a znode's are all alike
            table.add_row(*_process_row(node, indent="  ", functions=not same))
    console.print(table)
    listed = sum(len(group[2]) for group in groups)
    count = body.get("nodes_total", listed)
    if isinstance(count, int) and count > listed:
        console.print(
            f"the {listed} busiest of {count} node processes "
            "(zbroker status --nodes for every one); all of them by function:",
            style="dim",
        )
        console.print(_functions_table(body.get("by_function") or {}))
    waiting = body.get("waiting_dependencies", 0)
    console.print(
        (f"znodes: {len(groups)}   " if count == listed else "") + f"processes: {count}   "
        f"queued: {body.get('queued', 0)}   running: {body.get('running', 0)}   "
        f"held by nodes: {body.get('held', 0)}   "
        + (f"waiting for their dependencies: {waiting}   " if waiting else "")
        + f"dead letters: {body.get('dead_letters', 0)}"
        + ("   (stopping)" if body.get("accepting") is False else "")
    )
    counters = body.get("counters") or {}
    if counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    console.print("(zbroker status --json for ids and every function)", style="dim")


def _functions_table(functions: dict[str, Any]) -> Table:
    """Every node's figures summed by function (STATUS_REPLY `by_function`)."""
    table = Table(title="By function")
    keys = ("nodes", "slots", "busy", "held", "queued", "completed")
    table.add_column("function", no_wrap=True)
    for key in keys:
        table.add_column(key, justify="right", no_wrap=True)
    for name, figures in sorted(functions.items()):
        if isinstance(figures, dict):
            table.add_row(name, *(str(figures.get(key, "")) for key in keys))
    return table


def _load(node: dict[str, Any]) -> str:
    """Running tasks of capacity, and how many of those wait for tasks they submitted
    (each lends its slot, so a node may run more than its capacity)."""
    load = f"{node.get('active', 0) - node.get('held', 0)}/{node.get('capacity', 0)}"
    waiting = node.get("waiting", 0)
    return f"{load} ({waiting} waiting)" if waiting else load


def _process_row(
    node: dict[str, Any], host: str = "", indent: str = "", functions: bool = True
) -> list[str]:
    return [
        indent + str(node.get("name", "")),
        host,
        str(node.get("pid", "")),
        str(node.get("state", "")),
        _load(node),
        str(node.get("held", 0)),
        str(node.get("completed", "")),
        f"{node.get('last_seen', 0):.1f}s ago",
        _summary(node.get("functions", [])) if functions else "",
    ]


def _total(nodes: list[dict[str, Any]], key: str) -> int:
    return sum(n[key] for n in nodes if isinstance(n.get(key), int))


Znode = tuple[str, str, list[dict[str, Any]]]  # name, host, its node processes


def znodes(nodes: list[dict[str, Any]]) -> list[Znode]:
    """The registered node processes grouped by the `znode` that runs them, by name: the
    processes of one znode register from one host as NAME.0, NAME.1, ... (or as NAME when it
    runs one), so NAME.K from a host belongs to the znode NAME there."""
    groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for node in nodes:
        name, host = str(node.get("name", "")), str(node.get("host", ""))
        base, dot, number = name.rpartition(".")
        if dot and base and number.isdigit():
            key, order = (base, host), int(number)
        else:
            key, order = (name, host), -1
        groups.setdefault(key, []).append((order, node))
    return [
        (name, host, [node for _, node in sorted(members, key=lambda m: m[0])])
        for (name, host), members in sorted(groups.items())
    ]


def _summary(functions: list[str], shown: int = 3) -> str:
    more = len(functions) - shown
    return ", ".join(functions[:shown]) + (f" +{more} more" if more > 0 else "")
