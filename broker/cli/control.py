"""How `zbroker status` and `zbroker dlq` ask a running broker: through the client's
ControlClient (the one `Client` uses), with its errors turned into a line on stderr and an
exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from broker.cli_keys import BrokerKey as BrokerKey, Curve as Curve, keys_of
from broker.protocol import ERR_UNKNOWN_COMMAND
from client.control import ControlClient
from client.errors import (
    BadEndpoint,
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    ClientError,
    NotFound,
)
from client.link import DEFAULT_CONNECT_TIMEOUT, ReqLink

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


# The options every command that asks a broker takes.
Broker = Annotated[
    str, typer.Option("--broker", metavar="URL", help="Endpoint of the broker to ask.")
]
Timeout = Annotated[
    float,
    typer.Option(min=0.001, metavar="S", help="Seconds to wait for the answer, resends included."),
]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        min=0.001,
        metavar="S",
        help="Seconds to wait for a connection to the broker before saying that nothing "
        "accepts connections at --broker (exit 3).",
    ),
]


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def asking(
    url: str,
    command: str,
    missing: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    curve: Path | None = None,
    broker_key: Path | None = None,
) -> Iterator[ControlClient]:
    """A ControlClient on a link of its own to the broker at `url`, closed on the way out.

    What goes wrong in the block ends the command: no connection within `connect_timeout`
    seconds, or no answer, exits 3; a URL that is not an
    endpoint, or an argument out of range, exits 2; an ERROR answer exits 1 with `missing`
    as the message when the broker has no such task, else naming `command` (STATUS, DLQ)
    as refused; a reply that breaks the protocol exits 1.
    """
    keys = keys_of(curve, broker_key)
    try:
        with ReqLink(url, connect_timeout=connect_timeout, keys=keys) as link:
            yield ControlClient(link)
    except BrokerUnreachable as exc:
        raise fail(f"{exc} (use --broker to point elsewhere)", EXIT_NO_ANSWER) from None
    except BrokerTimeout as exc:
        raise fail(f"{exc} (use --broker to point elsewhere)", EXIT_NO_ANSWER) from None
    except BadEndpoint as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except NotFound as exc:
        raise fail(missing or _refusal(url, command, exc), EXIT_FAILED) from None
    except BrokerError as exc:
        raise fail(_refusal(url, command, exc), EXIT_FAILED) from None
    except ValueError as exc:  # checked before anything was sent
        raise fail(str(exc), EXIT_USAGE) from None
    except ClientError as exc:
        raise fail(str(exc), EXIT_FAILED) from None


def _refusal(url: str, command: str, error: BrokerError) -> str:
    hint = ""
    if error.code == ERR_UNKNOWN_COMMAND:
        hint = "; the broker is older than this command: upgrade and restart it"
    return f"the broker at {url} refused {command}: {error.message} [{error.code}]{hint}"
