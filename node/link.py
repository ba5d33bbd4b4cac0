"""BrokerLink: a node's connection to the broker, and what it knows about it.

Owns the ZeroMQ context and the DEALER socket (fresh on every connect, so stale replies
cannot reach a new registration), the registration state, the heartbeat settings and the
backlog hint the broker announced, when the node last sent and heard anything, the backoff
between attempts to register, and the RESULTs waiting for a registration. Used only from the
node's socket thread (or by the inline watchdog holding the socket).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING

import zmq

from broker.protocol import Deregister, Heartbeat, Register, Registered, encode
from broker.protocol.frames import NOBLOCK, send_frames
from node.registry import NodeSetupError

if TYPE_CHECKING:
    from broker.security import PeerKeys

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.1  # seconds before the first new attempt to register
MAX_BACKOFF = 5.0
JITTER = 0.2  # +-20%, so nodes that lost the broker together do not return in lockstep
CLOSE_LINGER_MS = 500  # how long a clean stop waits for the last messages to leave


class BrokerLink:
    def __init__(
        self, url: str, interval: float, liveness: int, keys: PeerKeys | None = None
    ) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.url = url
        self.keys = keys  # CURVE: the node's key pair and the broker's public key
        self.socket: zmq.Socket[bytes] | None = None
        self.registered = False
        self.deregistered = False  # DEREGISTER sent: the node takes no new work, for good
        self.interval, self.liveness = interval, liveness  # until REGISTERED says otherwise
        self._backoff = MIN_BACKOFF
        self.connect_at = 0.0  # when to connect again while there is no socket
        self.register_deadline = self.last_sent = self.last_heard = 0.0
        self.unsent: list[list[bytes]] = []  # RESULT frames waiting for a registration
        # The broker's latest backlog hint for our functions (protocol.md 3.4); None: unknown.
        self.backlog: int | None = None
        self.results = 0  # messages handed to `send_in_order`: grows while we work

    @property
    def expiry(self) -> float:
        return self.interval * self.liveness

    def connect(self, register: Register) -> None:
        """Open a fresh socket and send REGISTER on it."""
        sock = self._context.socket(zmq.DEALER)
        sock.linger = 0
        if self.keys is not None:
            self.keys.apply(sock)
        try:
            sock.connect(self.url)
        except zmq.ZMQError as exc:
            sock.close()
            raise NodeSetupError(
                f"cannot connect to broker URL {self.url!r}: {exc}; use a URL like tcp://HOST:PORT"
            ) from None
        self.socket, self.registered = sock, False
        now = time.monotonic()
        self.register_deadline = now + self.expiry
        self.last_heard = now
        self.send(encode(register))

    def on_registered(self, msg: Registered) -> None:
        self.registered = True
        self.backlog = msg.backlog
        self.interval, self.liveness = msg.heartbeat_interval, msg.liveness
        self._backoff = MIN_BACKOFF
        log.info(
            "registered with broker at %s as %s (heartbeat %.3g s, liveness %d)",
            self.url,
            msg.node_id,
            msg.heartbeat_interval,
            msg.liveness,
        )

    def on_heartbeat(self, msg: Heartbeat) -> None:
        self.backlog = msg.backlog  # a HEARTBEAT without the hint: unknown now

    def deregister(self) -> None:
        """Tell the broker to send no more RUNs (once, and only if registered); the tasks
        running still answer."""
        if self.registered and not self.deregistered:
            self.deregistered = True
            self.send(encode(Deregister()))

    def heartbeat_if_due(self, now: float) -> None:
        """HEARTBEAT after an interval in which nothing else was sent (protocol.md 7.2)."""
        if now - self.last_sent >= self.interval:
            self.send(encode(Heartbeat()))

    def next_heartbeat(self) -> float:
        """When a heartbeat may be due next (a while from now if one is overdue already)."""
        return max(self.last_sent + self.interval, time.monotonic() + self.interval / 4)

    def send_in_order(self, frames: list[bytes]) -> None:
        """Send a RESULT (or RETRACTED) now if registered, else keep it until `flush()`:
        these leave in the order they were given, never before an earlier one."""
        self.results += 1
        if not self.registered or self.unsent or not self.send(frames):
            self.unsent.append(frames)

    def flush(self) -> None:
        """Send the RESULTs kept while the node was not registered (or the socket full)."""
        while self.unsent and self.send(self.unsent[0]):
            self.unsent.pop(0)

    def send(self, frames: list[bytes]) -> bool:
        """Send one message; False if it could not be queued now."""
        assert self.socket is not None
        try:
            send_frames(self.socket, [b"", *frames], NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent = time.monotonic()
        return True

    def drop(self, delay: float) -> None:
        """Close the socket (discarding what it still holds); connect again after `delay`."""
        if self.socket is not None:
            self.socket.close()
        self.socket, self.registered, self.backlog = None, False, None
        self.connect_at = time.monotonic() + delay

    def retry(self) -> None:
        """No REGISTERED came in time: back off and try again on a fresh socket."""
        delay = self._next_delay()
        log.info(
            "no answer from broker at %s; is `zbroker start` running? retrying in %.1f s",
            self.url,
            delay,
        )
        self.drop(delay)

    def reconnect(self, why: str) -> None:
        delay = self._next_delay()
        log.warning("%s; registering again in %.1f s", why, delay)
        self.drop(delay)

    def close(self, clean: bool) -> None:
        """Close for good; a clean stop lets the last RESULTs and DEREGISTER leave first.

        ZeroMQ sends in the background: the socket closed with a linger and the context
        terminated (which waits for that linger) see them leave before this returns."""
        if self.socket is not None:
            self.socket.close(linger=CLOSE_LINGER_MS if clean else 0)
            self.socket = None
        if not self._context.closed:
            self._context.term()

    def due(self, stopping: bool) -> float:
        """When the link next needs attention (monotonic seconds, or inf)."""
        if self.socket is None:
            return math.inf if stopping else self.connect_at
        if not self.registered:
            return self.register_deadline
        return min(self.last_sent + self.interval, self.last_heard + self.expiry)

    def _next_delay(self) -> float:
        delay = self._backoff * random.uniform(1 - JITTER, 1 + JITTER)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return delay
