"""`zbroker keys`: CurveZMQ key pairs for the broker, its nodes and its clients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.security import KeyFileError, fingerprint, load_public, new_pair

app = typer.Typer(no_args_is_help=True, add_completion=False, help="CurveZMQ key pairs.")


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="What the key is for: broker, node1, alice, ...")],
    directory: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Where to write the two files.")
    ] = Path("."),
) -> None:
    """Write a new key pair: DIR/NAME.key, the secret (mode 0600: keep it on the machine
    that uses it), and DIR/NAME.pub, the public key (give it to the broker's --authorized
    directory, or, for the broker's own key, to its nodes and clients as --broker-key).
    Refuses to overwrite a secret key."""
    if not name or "/" in name or name.startswith("."):
        raise typer.BadParameter(f"{name!r}: a plain file name, like node1", param_hint="NAME")
    if not directory.is_dir():
        raise typer.BadParameter(f"{directory} is not a directory", param_hint="--dir")
    try:
        secret, public = new_pair(directory, name)
    except FileExistsError:
        typer.echo(
            f"error: {directory / (name + '.key')} exists already; a secret key is never "
            "overwritten: pick another NAME or --dir, or remove the old one first",
            err=True,
        )
        raise typer.Exit(1) from None
    key = load_public(public)
    typer.echo(f"secret key: {secret}\npublic key: {public} ({key.decode()})")


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="A .pub or .key file.")],
) -> None:
    """Print the public key of a key file (never the secret) and its fingerprint, as the
    broker's log names a refused key."""
    try:
        key = load_public(file)
    except KeyFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{key.decode()}  (fingerprint {fingerprint(key)})")
