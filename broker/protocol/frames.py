"""Frame I/O for the per-task hot path, shared by the broker, the nodes and the clients.

A ZTB message is 4 to 6 frames and one task's round trip moves 8 messages, so the cost per
frame counts. pyzmq's `zmq.Socket.send`, `recv`, `getsockopt` and `send_multipart` /
`recv_multipart` are Python wrappers (argument checks, enum conversions) around the Cython
methods of `zmq.backend.Socket`, their base class. Calling those methods with plain int
flags moves a 4-frame message for 5.5 us instead of 13.5 us (`tools/bench.py frames`, in
process). Bytes frames only: no `copy=False` sends, no trackers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import zmq
import zmq.backend

NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)

_RCVTIMEO = int(zmq.RCVTIMEO)

_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_set = zmq.backend.Socket.set
_poll = zmq.backend.zmq_poll

Socket = zmq.Socket[Any]


def send_frames(sock: Socket, frames: Sequence[bytes], flags: int = 0) -> None:
    """Send one message of `frames` (at least one). With NOBLOCK, zmq.Again when the peer's
    queue is full; once the first frame is queued ZeroMQ takes the rest of the message."""
    more = flags | _MORE
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], more)
    _send(sock, frames[last], flags)


def send_routed(sock: Socket, identity: bytes, frames: Sequence[bytes], flags: int = 0) -> None:
    """Send one message through a ROUTER: the peer's identity, the empty delimiter, `frames`.
    With ROUTER_MANDATORY an unknown peer fails on the first frame (EHOSTUNREACH)."""
    more = flags | _MORE
    _send(sock, identity, more)
    _send(sock, b"", more)
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], more)
    _send(sock, frames[last], flags)


def recv_frames(sock: Socket, flags: int = 0) -> list[bytes]:
    """Receive one whole message. With NOBLOCK, zmq.Again when none is waiting. Frames are
    taken without a copy and read once, so no getsockopt(RCVMORE) per frame is needed."""
    frame = _recv(sock, flags, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        frames.append(frame.bytes)
    return frames


class TimedReceiver:
    """Blocking receives on one socket, each within a timeout (ZMQ_RCVTIMEO, set only when
    it changes). Waiting in the receive itself costs less per message than a poll followed
    by a receive: libzmq waits on the socket's own mailbox."""

    def __init__(
        self, sock: Socket, receive: Callable[[Socket, int], list[bytes]] | None = None
    ) -> None:
        self.sock = sock
        self._timeout_ms = -1  # as last set; -1 is ZeroMQ's default, no timeout
        # How a message is taken: `recv_frames`, or another that reads more of it (the
        # broker's gate reads the sender's key).
        self._receive = receive or recv_frames

    def recv(self, timeout_ms: int) -> list[bytes] | None:
        """The next message, or None if none came within `timeout_ms` (0: only one waiting)."""
        if timeout_ms != self._timeout_ms:
            _set(self.sock, _RCVTIMEO, timeout_ms)
            self._timeout_ms = timeout_ms
        try:
            return self._receive(self.sock, 0)
        except zmq.Again:
            return None


def readable(sock: Socket) -> bool:
    """Whether a message is waiting: cheaper than a non-blocking receive that fails."""
    return bool(cast(int, _get(sock, _EVENTS)) & POLLIN)


def poll(items: Sequence[tuple[Any, int]], timeout_ms: int) -> list[tuple[Any, int]]:
    """`zmq_poll` on (socket or file descriptor, events) pairs, built once by the caller: the
    pairs with events, within `timeout_ms` (-1: without end). `zmq.Poller.poll` makes the
    same call with its own lists around it."""
    return cast(list[tuple[Any, int]], _poll(items, timeout_ms))


def wait_readable(sock: Socket, timeout_ms: int) -> bool:
    """Wait up to `timeout_ms` (-1: without end) for a message; whether one is waiting.
    (`sock.poll()` builds a zmq.Poller per call.)"""
    return bool(_poll([(sock, POLLIN)], timeout_ms))
