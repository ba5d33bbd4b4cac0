"""The CURVE options every client program shares (zsubmit, zbroker status, dlq, top,
monitor): its own secret key file and the broker's public key file, loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.security import KeyFileError, PeerKeys, peer_keys

Curve = Annotated[
    Path | None,
    typer.Option(
        "--curve",
        metavar="KEY",
        help="This client's secret key file (zbroker keys new NAME), for a broker started "
        "with --curve. Needs --broker-key.",
    ),
]
BrokerKey = Annotated[
    Path | None,
    typer.Option("--broker-key", metavar="PUB", help="The broker's public key file, with --curve."),
]


def keys_of(curve: Path | None, broker_key: Path | None) -> PeerKeys | None:
    """The CURVE keys of --curve and --broker-key (None without them); a key file that does
    not load ends the command with typer's bad-parameter message (exit 2)."""
    try:
        return peer_keys(curve, broker_key)
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--curve") from None
