"""BrokerLink: a node's connection to the broker, and what it knows about it.

Owns the ZeroMQ context and the DEALER socket (fresh on every connect, so stale replies
cannot reach a new registration), the registration state, the heartbeat settings and the
backlog hint the broker announced, when the node last sent and heard anything, the backoff
between attempts to register, the RESULTs waiting for a registration, and those sent that
the broker has not confirmed as stored (protocol.md 3.22): both are claimed and sent again
when the node registers anew (7.3). A socket monitor tells when the connection to the
broker was lost and made again: a restarted broker does not know the node. Used only from
the node's socket thread (or by the inline watchdog holding the socket).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from typing import TYPE_CHECKING

import zmq

from broker.protocol import (
    RESULT,
    Batch,
    Claim,
    Deregister,
    Heartbeat,
    ProtocolError,
    Register,
    Registered,
    RemoteProtocolError,
    Result,
    decode,
    encode,
)
from broker.protocol.frames import NOBLOCK, recv_frames, send_frames
from node.registry import NodeSetupError

if TYPE_CHECKING:
    from broker.security import PeerKeys

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.1  # seconds before the first new attempt to register
MAX_BACKOFF = 5.0
JITTER = 0.2  # +-20%, so nodes that lost the broker together do not return in lockstep
# ZeroMQ's own reconnection: 100 ms (varied by JITTER), doubling to 5 s while it fails.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000
# How long a REGISTER waits for REGISTERED, in interval x liveness (the node's 1 s x 3
# until a broker announced its own): thousands of nodes starting together may wait their
# turn, and a REGISTER sent again (on a fresh socket) only adds to the queue (7.3).
REGISTER_PATIENCE = 2
CLOSE_LINGER_MS = 500  # how long a clean stop waits for the last messages to leave
# The socket monitor's events that tell a connection was lost and one was made again.
_LOST = int(zmq.EVENT_DISCONNECTED)
_MADE = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
WATCH_EVERY = 0.05  # seconds between looks at the monitor


def _in_pairs(frames: list[bytes]) -> list[bytes]:
    """A RESULT message kept for sending, in the pair form (protocol.md 2.4) if it was
    packed (2.5) for a broker that read that form."""
    if frames[1] != RESULT or len(frames) != 5:
        return frames
    try:
        message = decode(frames)
    except RemoteProtocolError:
        return frames  # not readable by any broker: nothing to mend
    if type(message) is not Batch or not message.packed:
        return frames
    return encode(Batch(message.items))


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
        # RESULT messages sent on this registration and not yet counted by a STORED, with
        # the count each one brought the RESULTs sent to (only when the broker confirms).
        self.unconfirmed: deque[tuple[int, list[bytes]]] = deque()
        self._results_sent = 0  # RESULT messages sent on this registration
        self.confirms = False  # the broker said it sends STORED (REGISTERED `stored`)
        self.packed = False  # the broker takes packed RESULTs (REGISTERED `packed`)
        self._monitor: zmq.Socket[bytes] | None = None  # DISCONNECTED, HANDSHAKE_SUCCEEDED
        self._lost = False  # the monitor saw the connection lost
        self._made = False  # the monitor saw the connection made (on this socket)
        self._watch_at = 0.0  # when to look at the monitor next
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
        # Reconnections of its own at ZeroMQ's level, varied so that nodes that lost the
        # broker together do not come back in lockstep (protocol.md 7.3).
        sock.setsockopt(zmq.RECONNECT_IVL, round(RECONNECT_IVL_MS * _jitter()))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        self.socket, self.registered = sock, False
        self._monitor = sock.get_monitor_socket(_LOST | _MADE)
        self._lost = self._made = False
        now = time.monotonic()
        self.register_deadline = now + REGISTER_PATIENCE * self.expiry
        self.last_heard = now
        self.send(encode(register))

    def on_registered(self, msg: Registered) -> None:
        self.registered = True
        self.confirms = msg.stored
        self.packed = msg.packed  # RESULTs may go in the packed form (protocol.md 2.5)
        if not msg.packed:  # a broker that does not read what an earlier one did
            self.unsent = [_in_pairs(frames) for frames in self.unsent]
        self.backlog = msg.backlog
        self.interval, self.liveness = msg.heartbeat_interval, msg.liveness
        self._backoff = MIN_BACKOFF
        # The first HEARTBEAT at a point of the interval of its own, so that nodes that
        # registered together do not heartbeat together (protocol.md 7.2).
        self.last_sent = min(self.last_sent, time.monotonic() - self.interval * random.random())
        log.info(
            "registered with broker at %s as %s (heartbeat %.3g s, liveness %d)",
            self.url,
            msg.node_id,
            msg.heartbeat_interval,
            msg.liveness,
        )

    def on_heartbeat(self, msg: Heartbeat) -> None:
        self.backlog = msg.backlog  # a HEARTBEAT without the hint: unknown now
        if msg.interval is not None and msg.interval != self.interval:
            # The broker's node count changed (protocol.md 7.1): heartbeats and the
            # broker's expiry at the new interval from now on.
            log.info("heartbeat interval %.3g s (was %.3g s)", msg.interval, self.interval)
            self.interval = msg.interval

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
        if not self.registered or self.unsent or not self._send_counted(frames):
            self.unsent.append(frames)

    def flush(self) -> None:
        """Send the RESULTs kept while the node was not registered (or the socket full)."""
        while self.unsent and self._send_counted(self.unsent[0]):
            self.unsent.pop(0)

    def _send_counted(self, frames: list[bytes]) -> bool:
        """`send`, and a RESULT sent is kept until the broker confirms it stored."""
        if not self.send(frames):
            return False
        if frames[1] == RESULT:
            self._results_sent += 1
            if self.confirms:
                self.unconfirmed.append((self._results_sent, frames))
        return True

    def on_stored(self, results: int) -> None:
        """STORED: the broker has the first `results` RESULT messages in its store."""
        unconfirmed = self.unconfirmed
        while unconfirmed and unconfirmed[0][0] <= results:
            unconfirmed.popleft()

    def unstored(self) -> list[list[bytes]]:
        """The RESULT messages the broker has not confirmed as stored, oldest first: those
        sent unconfirmed, then those waiting to be sent."""
        kept = [frames for _, frames in self.unconfirmed]
        return kept + [frames for frames in self.unsent if frames[1] == RESULT]

    def claims(self, running: list[Claim]) -> tuple[Claim, ...]:
        """What a REGISTER claims (protocol.md 7.3): the attempts `running` (or held), and
        those whose RESULTs wait to be sent (or sent again) once registered."""
        done = list(running)
        for frames in self.unsent:
            if frames[1] != RESULT:
                continue
            try:
                msg = decode(frames)
            except RemoteProtocolError:
                continue  # not readable by the broker either: nothing to claim
            items = msg.items if isinstance(msg, Batch) else (msg,)
            for item in items:
                if isinstance(item, Result) and not isinstance(item, ProtocolError):
                    done.append(Claim(item.task_id, item.attempt or 1, True))
        return tuple(done)

    def reconnected(self, now: float) -> bool:
        """Whether the connection to the broker was lost and made again since the socket
        was opened (looked at every WATCH_EVERY seconds at most)."""
        monitor = self._monitor
        if monitor is None or now < self._watch_at:
            return False
        self._watch_at = now + WATCH_EVERY
        while True:
            try:
                frames = recv_frames(monitor, NOBLOCK)
            except zmq.Again:
                return False
            event = int.from_bytes(frames[0][:2], "little")
            if event == _LOST:
                self._lost = True
            elif event == _MADE:
                self._made = True
                if self._lost:
                    return True

    def excuse(self, stall: float, now: float) -> None:
        """This node's own loop stalled for `stall` seconds (the process stopped or paused,
        a busy host): the broker's silence over it is not held against the broker
        (protocol.md 7.2), as the broker does not hold its own stalls against its nodes."""
        self.last_heard = min(now, self.last_heard + stall)

    def broker_dead(self, now: float) -> bool:
        """Whether the broker has been silent long enough to be dead (protocol.md 7.2):
        interval x liveness once the connection to it was lost, and twice that while the
        connection holds. A broker whose loop stalls (stopped, a busy host, a slow disk)
        keeps its connections, and its nodes coming back all at once when it resumes would
        be a storm; a broker whose process died loses them at once, and a host that
        vanished is found by the longer bound."""
        silent = now - self.last_heard
        return silent >= self.expiry and (self._lost or silent >= 2 * self.expiry)

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
        """Close the socket (discarding what it still holds); connect again after `delay`.
        The RESULTs the broker did not confirm are sent again on the next registration."""
        self._close_monitor()
        if self.socket is not None:
            self.socket.close()
        self.socket, self.registered, self.backlog = None, False, None
        self.connect_at = time.monotonic() + delay
        if self.unconfirmed:
            self.unsent[:0] = [frames for _, frames in self.unconfirmed]
            self.unconfirmed.clear()
        self._results_sent, self.confirms, self.packed = 0, False, False

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            if self.socket is not None:
                self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def retry(self) -> None:
        """No REGISTERED came in time. Not connected yet: ZeroMQ keeps connecting, and the
        REGISTER waiting in the socket leaves when it can, so wait on (saying so). Connected
        (and not lost since, see `reconnected`): the broker never answered, so back off and
        try again on a fresh socket."""
        if not self._made:
            log.info(
                "no connection to broker at %s yet; is `zbroker start` running there? "
                "retrying (the REGISTER leaves when it connects)",
                self.url,
            )
            self.register_deadline = time.monotonic() + self.expiry
            return
        delay = self._next_delay()
        log.info(
            "no answer from broker at %s; is `zbroker start` running? retrying in %.1f s",
            self.url,
            delay,
        )
        self.drop(delay)

    def reconnect(self, why: str, at_once: bool = False) -> None:
        delay = 0.0 if at_once else self._next_delay()
        log.warning("%s; registering again in %.1f s", why, delay)
        self.drop(delay)

    def close(self, clean: bool) -> None:
        """Close for good; a clean stop lets the last RESULTs and DEREGISTER leave first.

        ZeroMQ sends in the background: the socket closed with a linger and the context
        terminated (which waits for that linger) see them leave before this returns."""
        self._close_monitor()
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
        silence = self.expiry if self._lost else 2 * self.expiry  # see broker_dead
        return min(self.last_sent + self.interval, self.last_heard + silence)

    def _next_delay(self) -> float:
        delay = self._backoff * _jitter()
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return delay


def _jitter() -> float:
    return random.uniform(1 - JITTER, 1 + JITTER)
