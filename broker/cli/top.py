"""`zbroker top`: the dashboard's live view in a terminal, redrawn every second (rich).

It reads the broker as `zbroker monitor` does (broker.monitor.watch: one STATUS a second
through the control protocol) and shows the same figures: throughput, latency quantiles of
the last few seconds' answers, the queue by priority, each znode's processes with a load
bar, the recent failures.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from broker.cli.control import EXIT_NO_ANSWER, Broker, BrokerKey, Curve, Timeout, fail
from broker.cli.status import znodes
from broker.cli_keys import keys_of
from broker.monitor.watch import Snapshot, Watch
from broker.protocol import DEFAULT_BROKER_URL

BAR = 12  # characters of a load bar


def top(
    broker: Broker = DEFAULT_BROKER_URL,
    interval: Annotated[
        float, typer.Option(min=0.1, max=60, metavar="S", help="Seconds between redraws.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one view and exit (for scripts and logs).")
    ] = False,
    rows: Annotated[
        int, typer.Option(min=1, metavar="N", help="Most znodes listed (busiest first).")
    ] = 30,
    timeout: Timeout = 2.0,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    """Show a broker live in the terminal: throughput, latency, queue, nodes and failures,
    redrawn every second until Ctrl-C. A broker that does not answer is shown as such until
    it answers again (with --once: exit 3)."""
    keys = keys_of(curve, broker_key)
    watch = Watch(broker, interval, timeout=timeout, keys=keys)
    console = Console()
    if once:
        watch.poll()
        time.sleep(interval)  # a second read after `interval`: the answers in between
        watch.poll()
        watch.stop()
        snapshot = watch.latest()
        if snapshot.error is not None:
            raise fail(f"{snapshot.error} (use --broker to point elsewhere)", EXIT_NO_ANSWER)
        console.print(view(snapshot, broker, rows))
        return
    watch.start()
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            seq = -1
            while True:
                newer = watch.wait_newer(seq, interval * 2 + 5)
                if newer is not None:
                    seq = newer.seq
                    live.update(view(newer, broker, rows), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        watch.stop()


def view(snapshot: Snapshot, broker: str, rows: int) -> Group:
    """The whole screen for one snapshot."""
    status = snapshot.status
    if status is None:
        return Group(Text(f"broker {broker}: {snapshot.error}", style="bold red"))
    header = _header(snapshot, status, broker)
    parts: list[Any] = [header, _nodes(status.get("nodes", []), rows)]
    failures = status.get("metrics", {}).get("recent_failures", [])
    if failures:
        parts.append(_failures(failures[:5]))
    return Group(*parts)


def _header(snapshot: Snapshot, status: dict[str, Any], broker: str) -> Panel:
    metrics = status.get("metrics", {})
    point = snapshot.point or {}
    state = (
        Text("not answering: " + snapshot.error, "bold red")
        if snapshot.error
        else Text("up", "green")
    )
    lines = Text.assemble(
        (f"broker {broker} ", "bold"),
        state,
        f"   up {metrics.get('uptime', 0) / 60:.1f} min   ",
        time.strftime("%H:%M:%S", time.localtime(snapshot.at)),
        "\n",
        ("throughput ", "dim"),
        (f"{metrics.get('throughput_last_second', 0):,.1f}/s", "bold"),
        ("  last minute ", "dim"),
        f"{metrics.get('throughput_last_minute', 0):,.1f}/s",
        ("   latency p50/p95/p99 ", "dim"),
        " / ".join(_ms(point.get(q)) for q in ("p50", "p95", "p99")),
        "\n",
        ("queued ", "dim"),
        f"{status.get('queued', 0):,}",
        _by_priority(status.get("queued_by_priority", {})),
        ("   running ", "dim"),
        f"{status.get('running', 0):,}",
        ("   held ", "dim"),
        f"{status.get('held', 0):,}",
        ("   waiting ", "dim"),
        f"{status.get('waiting_retry', 0) + status.get('waiting_dependencies', 0):,}",
        ("   slots busy ", "dim"),
        f"{point.get('busy_slots', 0)}/{point.get('slots', 0)}",
        ("   dead letters ", "dim"),
        f"{status.get('dead_letters', 0):,}",
    )
    return Panel(lines, title="zbroker top", title_align="left")


def _by_priority(by_priority: dict[str, int]) -> str:
    if not by_priority:
        return ""
    shown = ", ".join(f"p{p}: {n:,}" for p, n in sorted(by_priority.items(), reverse=True))
    return f" ({shown})"


def _nodes(nodes: list[dict[str, Any]], rows: int) -> Table:
    groups = znodes(nodes)
    table = Table(title=f"{len(groups)} znodes, {len(nodes)} node processes", expand=True)
    for column in ("znode", "host", "procs", "load", "util 1m", "done", "failed", "seen"):
        side: JustifyMethod = "left" if column in ("znode", "host", "load") else "right"
        table.add_column(column, justify=side, no_wrap=True)

    def load(group: tuple[str, str, list[dict[str, Any]]]) -> float:
        processes = group[2]
        busy = sum(int(n.get("busy", 0)) for n in processes)
        return busy / max(1, sum(int(n.get("capacity", 0)) for n in processes))

    for name, host, processes in sorted(groups, key=load, reverse=True)[:rows]:
        busy = sum(n.get("busy", 0) for n in processes)
        slots = sum(n.get("capacity", 0) for n in processes)
        util = sum(n.get("utilisation", 0) * n.get("capacity", 0) for n in processes)
        seen = max(n.get("last_seen", 0) for n in processes)
        table.add_row(
            name,
            host,
            str(len(processes)),
            f"{_bar(busy, slots)} {busy}/{slots}",
            f"{100 * util / max(1, slots):.0f} %",
            f"{sum(n.get('completed', 0) for n in processes):,}",
            f"{sum(n.get('failed', 0) for n in processes):,}",
            f"{seen:.1f}s",
        )
    if len(groups) > rows:
        table.caption = f"{len(groups) - rows} more znodes not shown (--rows)"
    return table


def _failures(failures: list[dict[str, Any]]) -> Table:
    table = Table(title="recent failures", expand=True)
    for column in ("when", "task", "function", "exit", "error"):
        table.add_column(column, overflow="ellipsis", no_wrap=column != "error")
    for failure in failures:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(failure["at"])),
            failure["task_id"],
            failure["function"],
            str(failure["exit_code"]),
            failure.get("error") or "",
        )
    return table


def _bar(busy: int, slots: int) -> str:
    filled = round(BAR * busy / slots) if slots else 0
    return "█" * filled + "·" * (BAR - filled)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"
