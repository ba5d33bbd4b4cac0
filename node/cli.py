"""`znode`: run a worker node that offers function sets to a broker."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import typer

from broker import config_file, logs
from broker.protocol import (
    DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_INTERVAL,
    MAX_PREFETCH,
    Replaces,
)
from broker.protocol.version import package_version
from broker.security import KeyFileError, peer_keys
from node import supervision
from node.agent import serve
from node.config import DEFAULT_PREFETCH, NodeConfig, default_name
from node.registry import BUILTIN_SETS, NodeSetupError, resolve
from node.scaling import DEFAULT_SCALE_DOWN_AFTER, Scaling
from node.supervisor import ChildOptions, Supervisor, die_with_parent

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode="markdown")


def _scaling(
    concurrency: int | None,
    minimum: int | None,
    maximum: int | None,
    scale_down_after: float | None,
) -> Scaling | None:
    """The elastic settings the options ask for; None for a fixed number of processes."""
    if minimum is None and maximum is None:
        if scale_down_after is not None:
            raise typer.BadParameter(
                "it applies only to an elastic node: add --min N and/or --max N",
                param_hint="--scale-down-after",
            )
        return None
    if concurrency is not None:
        raise typer.BadParameter(
            "it sets a fixed number of processes, --min/--max a varying one: give one or the other",
            param_hint="--concurrency",
        )
    low = minimum or 1
    high = maximum if maximum is not None else max(low, os.cpu_count() or 1)
    if low > high:
        raise typer.BadParameter(
            f"{low} is above --max {high}; give a lower --min or a --max of at least {low}",
            param_hint="--min",
        )
    after = DEFAULT_SCALE_DOWN_AFTER if scale_down_after is None else scale_down_after
    return Scaling(low, high, after)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"znode {package_version()}")
        raise typer.Exit(0)


@app.command(cls=config_file.command_class("znode"))
def run(
    ctx: typer.Context,
    functions: list[str] = typer.Option(
        ...,
        "--functions",
        "-f",
        metavar="SET",
        help=(
            f"Function set to offer: a built-in set ({', '.join(sorted(BUILTIN_SETS))}), a "
            "module name (mytasks: mytasks.py in the current directory, which is searched "
            "first; mypkg.tasks: a module of a package) or a file path (path/to/tasks.py). "
            "Repeat to offer several sets."
        ),
    ),
    broker: str = typer.Option(
        DEFAULT_BROKER_URL,
        "--broker",
        "-b",
        metavar="URL",
        help="URL of the broker to register with.",
    ),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        "-c",
        metavar="N",
        min=1,
        help="Node processes to run, for CPU-bound functions on several cores (default: the "
        "number of CPUs). One process registers as NAME; with N > 1 each registers as NAME.K. "
        "A supervisor restarts a process that dies, or that stops a task past its task "
        "timeout or cancelled while it runs. "
        "For a number that follows the load, use --min/--max instead.",
    ),
    minimum: int | None = typer.Option(
        None,
        "--min",
        metavar="N",
        min=1,
        help="Elastic: run at least N node processes (default 1 when --max is given), and "
        "more, up to --max, while the broker holds tasks waiting for these functions. Each "
        "registers as NAME.K.",
    ),
    maximum: int | None = typer.Option(
        None,
        "--max",
        metavar="N",
        min=1,
        help="Elastic: run at most N node processes (default: the number of CPUs, and at "
        "least --min).",
    ),
    scale_down_after: float | None = typer.Option(
        None,
        "--scale-down-after",
        metavar="SECONDS",
        min=0.001,
        help=f"Elastic: stop a process that ran nothing and saw no backlog for this long "
        f"(default {DEFAULT_SCALE_DOWN_AFTER:g}); it finishes its tasks first, and --min "
        "processes always stay.",
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        "-t",
        metavar="T",
        min=1,
        help="Tasks each process runs at once, in threads: raise it for I/O-bound functions "
        "(capacity = concurrency x threads).",
    ),
    prefetch: int = typer.Option(
        DEFAULT_PREFETCH,
        "--prefetch",
        metavar="N",
        min=0,
        max=MAX_PREFETCH,
        help="Tasks each process may hold beyond the ones it runs, so that a finished task is "
        "followed at once by the next instead of a round trip to the broker (the broker "
        "sends about 10 ms of work of them, one task when tasks run long). Held tasks are "
        "taken back when another node has a slot with nothing to do. 0 turns it off.",
    ),
    name: str = typer.Option(
        None,
        "--name",
        "-n",
        metavar="NAME",
        help="Name shown in the broker's status (default: HOST-PID).",
    ),
    heartbeat_interval: float = typer.Option(
        DEFAULT_HEARTBEAT_INTERVAL,
        "--heartbeat-interval",
        metavar="SECONDS",
        min=0.001,
        help="Seconds between heartbeats until the broker's REGISTERED sets its own value.",
    ),
    log_level: str = typer.Option(
        "INFO", "--log-level", help=f"Log verbosity: one of {', '.join(logs.LEVELS)}."
    ),
    log_format: str = typer.Option(
        "text",
        "--log-format",
        metavar="text|json",
        help="'text' for people; 'json' for one JSON object per line (ts, level, logger, "
        "message, and task_id and node on the lines about a task).",
    ),
    log_file: Path | None = typer.Option(
        None,
        "--log-file",
        metavar="PATH",
        help="Also append the log to this file (the log always goes to stderr).",
    ),
    curve: Path | None = typer.Option(
        None,
        "--curve",
        metavar="KEY",
        help="This node's secret key file (zbroker keys new node1), for a broker started "
        "with --curve; its .pub goes in the broker's --authorized DIR/nodes. Needs "
        "--broker-key.",
    ),
    broker_key: Path | None = typer.Option(
        None,
        "--broker-key",
        metavar="PUB",
        help="The broker's public key file (broker.pub), with --curve.",
    ),
    # How the supervisor starts a node process: not for people.
    parent_pid: int | None = typer.Option(None, "--parent-pid", hidden=True),
    report_fd: int | None = typer.Option(None, "--report-fd", hidden=True),
    demand_fd: int | None = typer.Option(None, "--demand-fd", hidden=True),
    replaces_pid: int | None = typer.Option(None, "--replaces-pid", hidden=True),
    replaces_reason: str = typer.Option("", "--replaces-reason", hidden=True),
    standby: bool = typer.Option(False, "--standby", hidden=True),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version of znode and exit.",
    ),
) -> None:
    """Run a worker node: register with the broker and run the tasks it sends.

    Your own functions: `--functions mytasks` offers the functions of mytasks.py in the
    current directory, `--functions path/to/tasks.py` those of that file. A module offers
    the names in its `__all__`, or else every public function defined in it; one that fails
    to import stops znode with its error (file and line).

    Retryable failures: decorate a function with `@retryable(ConnectionError, ...)` (from
    node.registry) and the broker retries its task when it raises one of those.

    A cancelled task is stopped: dropped if it has not started, else its node process is
    replaced.
    """
    scaling = _scaling(concurrency, minimum, maximum, scale_down_after)
    logs.configure(log_level, log_format, log_file)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    if concurrency is None:
        concurrency = (os.cpu_count() or 1) if scaling is None else scaling.maximum
    config = NodeConfig(
        function_sets=tuple(functions),
        broker_url=broker,
        concurrency=concurrency,
        threads=threads,
        prefetch=prefetch,
        name=name or default_name(),
        heartbeat_interval=heartbeat_interval,
        parent_pid=parent_pid,
        replaces=Replaces(replaces_pid, replaces_reason) if replaces_pid else None,
        report_fd=report_fd,
        demand_fd=demand_fd,
        curve=None if curve is None else str(curve.resolve()),
        broker_key=None if broker_key is None else str(broker_key.resolve()),
    )
    try:
        peer_keys(config.curve, config.broker_key)  # a key that does not load stops us now
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--curve") from None
    try:
        if parent_pid is None:
            resolve(config.function_sets)  # fail here, once, rather than in every child
            options = ChildOptions(
                log_level,
                str(log_file) if log_file else None,
                log_format,
                config_file.environment_without_options(ctx.command),
            )
            code = Supervisor(config, options, scaling).run()
        elif standby:
            code = _stand_by(config)
        else:
            code = serve(config)
    except NodeSetupError as exc:
        supervision.report(report_fd, f"{supervision.SETUP_FAILED}{exc}")
        typer.echo(f"znode: {exc}", err=True)
        raise typer.Exit(supervision.SETUP_ERROR) from None
    raise typer.Exit(code)


def _stand_by(config: NodeConfig) -> int:
    """A spare node process: load everything now, then wait for the supervisor to hand it
    its work on stdin (a name, the process it replaces and that one's answers to send) when
    a node process needs replacing; exit 0 on end of input."""
    resolve(config.function_sets)
    data = sys.stdin.buffer.read()  # the supervisor closes it once it has written
    if not data.strip():
        return 0
    work = supervision.decode_assignment(data)
    return serve(
        dataclasses.replace(config, name=work.name, replaces=work.replaces, handover=work.answers)
    )


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":  # how the supervisor starts its children
    main()
