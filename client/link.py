"""The client's sockets to the broker: connecting them, and `ReqLink`, the REQ exchange with
Lazy Pirate resends that every request-reply call goes through (EXECUTE, STATUS, DLQ)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import zmq

from broker.protocol import Error, Message
from broker.protocol.frames import TimedReceiver, send_frames
from client.errors import BadEndpoint, BrokerTimeout, ClientError, broker_error
from client.payloads import first_answer

RESEND_INTERVAL = 2.5  # seconds without a reply before a request is sent again
CLOSED = "this client is closed; create a new Client (or ReqLink) to reach the broker again"


def open_socket(context: zmq.Context[Any], kind: int, url: str) -> zmq.Socket[Any]:
    """A socket of `kind` connected to the broker, with linger 0 so closing never hangs."""
    sock: zmq.Socket[Any] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(url)
    except zmq.ZMQError as exc:
        sock.close()
        raise BadEndpoint(url, str(exc)) from None
    return sock


def poll_ms(seconds: float) -> int:
    """Milliseconds for zmq poll; at least 1 so a nearly-due deadline does not spin."""
    return max(1, math.ceil(seconds * 1000))


def check_resend_interval(seconds: float) -> float:
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"resend_interval must be positive, got {seconds!r}")
    return seconds


class ReqLink:
    """One request at a time to the broker over a REQ socket, Lazy Pirate style: when no
    reply comes within `resend_interval` seconds the socket is replaced and the same request
    sent again (the broker answers a resent EXECUTE without running the task twice).

    `context`: a ZeroMQ context to share (the Client's); None makes one that `close()`
    destroys. The socket is made on the first request. Not thread-safe, as its socket.
    """

    def __init__(
        self,
        url: str,
        resend_interval: float = RESEND_INTERVAL,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.url = url
        self.resend_interval = check_resend_interval(resend_interval)
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._receiver: TimedReceiver | None = None  # on the current socket
        self._closed = False

    def __enter__(self) -> ReqLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (an unanswered request is abandoned). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._discard_socket()
        if self._own_context:
            self._context.destroy(linger=0)

    def exchange(
        self, request: list[bytes], answers: Callable[[Message], bool], timeout: float | None
    ) -> Message:
        """Send `request` until a reply `answers` it, for at most `timeout` seconds (None:
        without end). An ERROR answer raises BrokerError (NotFound for `not_found`), no
        answer in time BrokerTimeout, a reply that does not decode BadReply."""
        limit = math.inf if timeout is None else timeout
        deadline = time.monotonic() + limit
        try:
            receiver = self._receiver or self._connected()  # no call once connected
            send_frames(receiver.sock, request)
            while True:
                frames = self._receive(receiver, deadline)
                if frames is None:
                    if time.monotonic() >= deadline:
                        raise BrokerTimeout(self.url, limit)
                    # A REQ socket stays stuck on a lost request: start over on a new one.
                    self._discard_socket()
                    receiver = self._connected()
                else:
                    reply = first_answer(frames, answers, self.url)
                    if reply is not None:
                        break
                # After a stale reply a REQ socket must send before it may receive again.
                send_frames(receiver.sock, request)
        except BaseException:
            self._discard_socket()  # its REQ state machine is mid-request
            raise
        if isinstance(reply, Error):
            raise broker_error(reply)
        return reply

    def _connected(self) -> TimedReceiver:
        if self._closed:
            raise ClientError(CLOSED)
        if self._receiver is None:
            self._receiver = TimedReceiver(open_socket(self._context, zmq.REQ, self.url))
        return self._receiver

    def _discard_socket(self) -> None:
        if self._receiver is not None:
            self._receiver.sock.close()
            self._receiver = None

    def _receive(self, receiver: TimedReceiver, deadline: float) -> list[bytes] | None:
        """The next reply, or None once `resend_interval` or the deadline passes first."""
        wait = min(self.resend_interval, deadline - time.monotonic())
        # poll_ms(wait), without its call on every request's way:
        return receiver.recv(max(1, math.ceil(wait * 1000))) if wait > 0 else None
