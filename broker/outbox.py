"""The outbox: what a peer cannot take yet, bounded in bytes per peer.

libzmq bounds each peer's outgoing pipe in messages only (ZMQ_SNDHWM), and a message may be
anything up to the largest answer. The broker keeps that pipe short (PIPE_LIMIT messages)
and holds what does not fit here, in order, up to `budget` bytes per peer; past the budget a
message is dropped and reported, as libzmq would have dropped it at its limit. A client loses
nothing by it: the answers it missed are kept answers, which its resend gets (protocol.md 6).
So a peer that never reads costs at most PIPE_LIMIT messages in libzmq plus `budget` bytes
here, whatever the size of its answers. What tells a node what to do (RUN, RETRACT, STOP,
REGISTERED, DISCONNECT) is never dropped: a RUN lost would leave its task on a node that
never heard of it. It is held past the budget; a node's window (protocol.md 5.5) bounds it.

The server sends through `send`, and calls `flush` on every turn of its loop while anything
is held (`held`), which sends what the pipes take again. Part of the broker's shell.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import zmq

from broker import protocol as p
from broker.protocol.frames import NOBLOCK, send_routed

# Commands a node must receive: held past the budget, never dropped.
KEPT = frozenset({p.RUN, p.RETRACT, p.STOP, p.REGISTERED, p.DISCONNECT})
PIPE_LIMIT = 16  # messages in libzmq's pipe to one peer (ZMQ_SNDHWM)
DEFAULT_BUDGET = 64 * 1024 * 1024  # bytes held here for one peer


class PeerGoneError(Exception):
    """The peer has no connection any more (ROUTER_MANDATORY's EHOSTUNREACH)."""


class Outbox:
    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._queues: dict[bytes, deque[list[bytes]]] = {}
        # Whether anything is held: an attribute, as the server asks at every send.
        self.held = False
        self._bytes: dict[bytes, int] = {}
        self.held_bytes = 0  # over every peer
        self.most_held_bytes = 0  # the high-water mark of `held_bytes`
        self.dropped = 0  # messages dropped past a peer's budget
        self.dropped_bytes = 0

    def send(self, router: zmq.Socket[Any], peer: bytes, frames: list[bytes]) -> bool:
        """Send `frames` (a message from its tag on) to `peer` now, or hold them behind what
        it holds already (at least one message, whatever its size). False: dropped, as the
        peer's budget is spent (never a command in KEPT). Raises PeerGoneError."""
        queue = self._queues.get(peer)
        if queue is None:
            try:
                send_routed(router, peer, frames, NOBLOCK)
                return True
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    raise PeerGoneError(peer.hex()) from None
                raise
        held, size = self._bytes.get(peer, 0), sum(map(len, frames))
        if held + size > self.budget and queue and frames[1] not in KEPT:
            self.dropped += 1
            self.dropped_bytes += size
            return False
        if queue is None:
            queue = self._queues[peer] = deque()
            self.held = True
        queue.append(frames)
        self._bytes[peer] = held + size
        self.held_bytes += size
        self.most_held_bytes = max(self.most_held_bytes, self.held_bytes)
        return True

    def flush(self, router: zmq.Socket[Any]) -> list[bytes]:
        """Send what each peer's pipe takes now, in order; the peers found gone (what they
        were held is dropped)."""
        gone: list[bytes] = []
        for peer, queue in list(self._queues.items()):
            try:
                while queue:
                    send_routed(router, peer, queue[0], NOBLOCK)
                    size = sum(map(len, queue.popleft()))
                    self._bytes[peer] -= size
                    self.held_bytes -= size
            except zmq.Again:
                continue  # the pipe is full again: the rest waits
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                gone.append(peer)
            self.forget(peer)  # all sent, or gone
        return gone

    def forget(self, peer: bytes) -> None:
        """Drop what `peer` was held (it is gone)."""
        self._queues.pop(peer, None)
        self.held_bytes -= self._bytes.pop(peer, 0)
        self.held = bool(self._queues)

    def view(self) -> dict[str, int]:
        """For STATUS_REPLY metrics."""
        return {
            "outbox_peers": len(self._queues),
            "outbox_bytes": self.held_bytes,
            "outbox_most_bytes": self.most_held_bytes,
            "outbox_dropped": self.dropped,
            "outbox_dropped_bytes": self.dropped_bytes,
        }
