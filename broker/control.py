"""Control requests to a running broker (used by `zbroker status`): one REQ round trip."""

from __future__ import annotations

from typing import Any

import zmq

from broker import protocol as p


class BrokerUnreachable(Exception):
    """The broker did not answer in time."""


def request(url: str, message: p.Message, timeout: float) -> p.Message:
    """Send one control message and return the broker's decoded answer."""
    context: zmq.Context[Any] = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(url)
        sock.send_multipart(p.encode(message))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise BrokerUnreachable(
                f"no answer from the broker at {url} within {timeout:g} s; "
                "is `zbroker start` running there? (use --broker to point elsewhere)"
            )
        return p.decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)


def status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    reply = request(url, p.Status(), timeout)
    if isinstance(reply, p.Error):
        raise p.ProtocolError(reply.code, f"broker refused STATUS: {reply.message}")
    if not isinstance(reply, p.StatusReply):
        raise p.ProtocolError(p.ERR_MALFORMED, f"expected STATUS_REPLY, got {reply!r}")
    return reply.body
