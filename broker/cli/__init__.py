"""zbroker: start a broker, or ask a running one for its status and its dead letters.

`app` is the console script (`zbroker = "broker.cli:app"`). Each command lives in a module
of its own: `start` runs the server, `status` and `dlq` ask a running broker through the
client's ControlClient (zbroker is a client program of the broker it asks).
"""

from __future__ import annotations

from typing import Annotated

import typer

from broker import config_file
from broker.cli import dlq, keys
from broker.cli.monitor import monitor
from broker.cli.start import start
from broker.cli.status import EPILOG as STATUS_EPILOG, status
from broker.cli.top import top
from broker.protocol.version import package_version

app = typer.Typer(
    cls=config_file.group_class("zbroker"), no_args_is_help=True, add_completion=False
)
app.command()(start)
app.command(epilog=STATUS_EPILOG)(status)
app.add_typer(dlq.app, name="dlq")
app.add_typer(keys.app, name="keys")
app.command()(monitor)
app.command()(top)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"zbroker {package_version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of zbroker and exit.",
        ),
    ] = False,
) -> None:
    """The ZTB task broker: routes tasks from clients to nodes. See protocol.md."""
