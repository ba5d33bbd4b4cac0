"""The client's sockets to the broker: connecting them, watching that the first connection
succeeds (`Contact`, `ConnectWatch`) and, for the life of a socket, that its connection was
lost and made again (`Reconnects`), and `ReqLink`, the REQ exchange with Lazy Pirate
resends that every request-reply call goes through (EXECUTE, FETCH, CANCEL, STATUS, DLQ)."""

from __future__ import annotations

import itertools
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from broker.protocol import Error, Message, Status, StatusReply, TaskCompleted, encode
from broker.protocol.frames import (
    NOBLOCK,
    POLLIN,
    TimedReceiver,
    poll,
    recv_frames,
    send_frames,
)
from client.errors import BadEndpoint, BrokerTimeout, BrokerUnreachable, ClientError, broker_error
from client.payloads import first_answer, replies

if TYPE_CHECKING:
    from broker.security import PeerKeys

RESEND_INTERVAL = 2.5  # seconds without a reply before a request is sent again
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds the first connection to the broker may take
CLOSED = "this client is closed; create a new Client (or ReqLink) to reach the broker again"

# The socket monitor events that tell how connecting goes (libzmq's zmq_socket_monitor).
_ATTEMPTED = int(zmq.EVENT_CONNECT_DELAYED) | int(zmq.EVENT_CLOSED)
_TCP_CONNECTED = int(zmq.EVENT_CONNECTED)
_HANDSHAKE_FAILED = (
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    | int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    | int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
)
_REACHED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_LOST = int(zmq.EVENT_DISCONNECTED)  # an established connection went (a broker killed)
_WATCHED = _ATTEMPTED | _TCP_CONNECTED | _HANDSHAKE_FAILED | _REACHED | _LOST
_LIFE = _LOST | _REACHED  # what `Reconnects` watches: rare, so its monitor never fills up

# How long a wait on a socket with `Reconnects` may go before its owner looks at them: the
# longest a resend after a reconnection waits. Waits that end sooner (a reply came) cost
# nothing more; the owners look at most this often while replies flow.
LOOK_MS = 50
LOOK_INTERVAL = LOOK_MS / 1000

_monitor_names = itertools.count()  # next() is atomic: sockets of any thread get their own


def open_socket(context: zmq.Context[Any], kind: int, url: str) -> zmq.Socket[Any]:
    """A socket of `kind` connected to the broker, with linger 0 so closing never hangs."""
    sock: zmq.Socket[Any] = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    _connect(sock, url)
    return sock


def _connect(sock: zmq.Socket[Any], url: str) -> None:
    try:
        sock.connect(url)
    except zmq.ZMQError as exc:
        sock.close()
        raise BadEndpoint(url, str(exc)) from None


def _monitor(sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
    """A PAIR socket that receives the `events` of `sock` (libzmq's zmq_socket_monitor),
    called from the thread that owns `sock`. A socket has one monitor at a time: a second
    replaces the first at once, so no event falls between them. (pyzmq's
    `get_monitor_socket` would return the first instead.)"""
    address = f"inproc://ztb-monitor-{next(_monitor_names)}"
    sock.monitor(address, events)
    pair: zmq.Socket[Any] = sock.context.socket(zmq.PAIR)
    pair.setsockopt(zmq.LINGER, 0)
    pair.connect(address)
    return pair


def _events(monitor: zmq.Socket[Any]) -> Iterator[int]:
    """The events waiting on a monitor's PAIR socket, in order, without blocking."""
    while True:
        try:
            frames = recv_frames(monitor, NOBLOCK)
        except zmq.Again:
            return
        (event,) = struct.unpack_from("=H", frames[0])
        yield event


def poll_ms(seconds: float) -> int:
    """Milliseconds for zmq poll; at least 1 so a nearly-due deadline does not spin."""
    return max(1, math.ceil(seconds * 1000))


def check_resend_interval(seconds: float) -> float:
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"resend_interval must be positive, got {seconds!r}")
    return seconds


def check_connect_timeout(seconds: float | None) -> float | None:
    if seconds is not None and not (
        isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0
    ):
        raise ValueError(
            f"connect_timeout must be a positive number of seconds or None, got {seconds!r}"
        )
    return seconds


class Contact:
    """What one client knows of its contact with the broker at `url`, shared by its sockets.

    Until a first ZeroMQ handshake with the broker succeeds (`reached`), every socket opened
    through `open` is watched by a socket monitor, and a wait that ends without a connection
    (`connect_timeout` seconds, or the request's own timeout if shorter) raises
    BrokerUnreachable. Once reached, sockets are opened bare: the monitor's cost is paid only
    on the way to the first connection, and a later silence is the broker's (BrokerTimeout).
    `answered`: a reply came once, so a timeout no longer asks whether the broker runs.
    `connect_timeout` None: no separate limit, a wait ends at its timeout as BrokerTimeout.
    """

    def __init__(
        self,
        url: str,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        keys: PeerKeys | None = None,
        client_id: str | None = None,
    ) -> None:
        self.url = url
        self.connect_timeout = check_connect_timeout(connect_timeout)
        self.keys = keys  # CURVE: this client's key pair and the broker's public key
        # The client id its EXECUTEs, FETCHes and CANCELs name (protocol.md 5.11): the scope
        # of its task ids on a broker without CURVE. None: the shared scope.
        self.client_id = client_id
        self.reached = False
        self.answered = False
        # Whether the broker reads packed EXECUTEs (protocol.md 2.5): until one of this
        # client's senders has one refused whole, as a broker before document 1.17 does; the
        # senders started after that send pairs from the start.
        self.packs = True

    def open(
        self, context: zmq.Context[Any], kind: int
    ) -> tuple[zmq.Socket[Any], ConnectWatch | None]:
        """A socket of `kind` connected to the broker (linger 0), and its watch while the
        broker has not been reached."""
        sock, watch, _ = self._open(context, kind, keep=False)
        return sock, watch

    def open_watched(
        self, context: zmq.Context[Any], kind: int
    ) -> tuple[zmq.Socket[Any], ConnectWatch | None, Reconnects | None]:
        """`open`, for a socket watched for its whole life: by its ConnectWatch until the
        broker is reached, which then hands it over to a Reconnects (`ConnectWatch.kept`);
        by a Reconnects from the start once it is. One of the two is None."""
        return self._open(context, kind, keep=True)

    def _open(
        self, context: zmq.Context[Any], kind: int, keep: bool
    ) -> tuple[zmq.Socket[Any], ConnectWatch | None, Reconnects | None]:
        sock: zmq.Socket[Any] = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.keys.apply(sock)
        # Monitors start before connecting, to see every event.
        watch, reconnects = None, None
        if not self.reached and self.connect_timeout is not None:
            watch = ConnectWatch(sock, self, keep)
        elif keep:
            reconnects = Reconnects(sock)
        try:
            _connect(sock, self.url)
        except BadEndpoint:
            for each in (watch, reconnects):
                if each is not None:
                    each.close()
            raise
        return sock, watch, reconnects

    def connect_deadline(self, start: float) -> float:
        """When a wait begun at `start` gives up on connecting (inf once reached)."""
        if self.reached or self.connect_timeout is None:
            return math.inf
        return start + self.connect_timeout

    def no_answer(self, waited: float, watch: ConnectWatch | None) -> ClientError:
        """The error for a wait of `waited` seconds that ended without an answer."""
        if watch is not None and not self.reached:
            return watch.unreachable(waited)
        return BrokerTimeout(self.url, waited, self.answered)


class ConnectWatch:
    """A socket monitor on one socket of `contact` until the broker is reached: it marks the
    contact reached at the first ZeroMQ handshake, and remembers how the attempts went for
    the message of BrokerUnreachable. With `keep`, it hands the socket over to a Reconnects
    (`kept`) at that handshake."""

    def __init__(self, sock: zmq.Socket[Any], contact: Contact, keep: bool = False) -> None:
        self.contact = contact
        self._sock = sock
        self._keep = keep
        self.kept: Reconnects | None = None
        self.monitor: zmq.Socket[Any] | None = _monitor(sock, _WATCHED)
        self._items = [(sock, POLLIN), (self.monitor, POLLIN)]
        self._seen = 0  # the events seen, or-ed

    def readable(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for a message on the socket while taking the monitor's
        events; whether a message waits. Returns early, False, when the broker is reached
        (the watch is then closed: the caller goes on without it)."""
        if self.monitor is None:
            return bool(poll([(self._sock, POLLIN)], timeout_ms))
        ready = poll(self._items, timeout_ms)
        if any(item is self.monitor for item, _ in ready):
            self._take_events()
        return any(item is self._sock for item, _ in ready)

    @property
    def closed(self) -> bool:
        return self.monitor is None

    def take_events(self) -> None:
        """Read the monitor's events waiting (for a caller that polls it itself, `monitor`):
        the watch closes itself once the broker is reached."""
        if self.monitor is not None:
            self._take_events()

    def unreachable(self, waited: float) -> BrokerUnreachable:
        if self.monitor is not None:
            self._take_events()
        return BrokerUnreachable(self.contact.url, waited, self._reason())

    def close(self) -> None:
        if self.monitor is None:
            return
        if not self._sock.closed and self.kept is None:  # else the socket's monitor is kept's
            self._sock.monitor(None, 0)
        self.monitor.close()
        self.monitor = None

    def _take_events(self) -> None:
        assert self.monitor is not None
        for event in _events(self.monitor):
            self._seen |= event
            if event & _REACHED:
                self.contact.reached = True
                if self._keep:
                    self.kept = Reconnects(self._sock)  # replaces this monitor at once
                    for later in _events(self.monitor):  # what came before it did
                        self.kept.note(later)
                self.close()
                return

    def _reason(self) -> str:
        curve = self.contact.keys is not None
        if self._seen & int(zmq.EVENT_HANDSHAKE_FAILED_AUTH):
            return (
                "the broker refused this client's CURVE key: add its .pub file to the "
                "broker's --authorized directory (clients/ or admins/)"
            )
        if curve and (self._seen & _HANDSHAKE_FAILED or self._seen & _TCP_CONNECTED):
            return (
                "the CURVE handshake did not complete: is --broker-key the broker's public "
                "key, and does the broker run with --curve?"
            )
        if self._seen & _HANDSHAKE_FAILED:
            return (
                "something accepts connections there but the ZeroMQ handshake failed: a "
                "broker with --curve needs this client's --curve and --broker-key"
            )
        if self._seen & _TCP_CONNECTED:
            return (
                "something accepts TCP connections there but does not complete a ZeroMQ "
                "handshake (not a ZTB broker's port?)"
            )
        if self._seen & _ATTEMPTED:
            return "nothing accepts connections there (connection refused or no route)"
        return "no connection could be made (does the host name resolve?)"


class Reconnects:
    """A socket monitor on one socket to the broker for the socket's whole life, read when
    its owner looks (`reconnected`, without blocking; the owners look when a wait ends
    without a reply, at most LOOK_INTERVAL apart): whether the connection was lost and
    made again since the last look.

    A broker killed and started again on its address knows only what its store kept: what
    the socket had sent and not been answered may be gone, and a restored task has no
    requester until its EXECUTE comes again (protocol.md 5.2, 6). So the owner sends
    everything in flight again at once, instead of after `resend_interval` of silence; the
    broker answers a resent task id without running it twice. Only the two events of a
    connection's life are watched: a broker down for long adds no event per attempt."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock
        self.monitor: zmq.Socket[Any] = _monitor(sock, _LIFE)
        self._lost = False  # a connection was lost, none made since
        self._again = False  # one was made after a loss, since the last look

    def note(self, event: int) -> None:
        """Take one monitor event (also one read by the ConnectWatch this replaced)."""
        if event & _LOST:
            self._lost = True
        elif event & _REACHED and self._lost:  # the first handshake is no reconnection
            self._lost, self._again = False, True

    def reconnected(self) -> bool:
        """Whether the connection was made again after it was lost, since the last call."""
        for event in _events(self.monitor):
            self.note(event)
        again, self._again = self._again, False
        return again

    def forget(self) -> None:
        """Drop what happened so far, before a request is sent: it goes on the connection
        as it is now, or, while there is none, waits in the socket for the next one made;
        only a loss after it can take it."""
        for _ in _events(self.monitor):
            pass
        self._lost = self._again = False

    def close(self) -> None:
        """Stop watching; before or after the socket closes."""
        if self.monitor.closed:
            return
        if not self._sock.closed:
            self._sock.monitor(None, 0)
        self.monitor.close()


class ReqLink:
    """One request at a time to the broker over a REQ socket, Lazy Pirate style: when no
    reply comes within `resend_interval` seconds, or as soon as the socket's connection was
    lost and made again (a broker restarted: the request went with the connection, see
    `Reconnects`), the socket is replaced and the same request sent again (the broker
    answers a resent EXECUTE without running the task twice).

    `context`: a ZeroMQ context to share (the Client's); None makes one that `close()`
    destroys. The socket is made on the first request. `connect_timeout`: seconds the first
    connection may take before a request fails with BrokerUnreachable (see `Contact`).
    Not thread-safe, as its socket.
    """

    def __init__(
        self,
        url: str,
        resend_interval: float = RESEND_INTERVAL,
        context: zmq.Context[Any] | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        keys: PeerKeys | None = None,
        client_id: str | None = None,
    ) -> None:
        self.url = url
        self.resend_interval = check_resend_interval(resend_interval)
        self.contact = Contact(url, connect_timeout, keys, client_id)
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._receiver: TimedReceiver | None = None  # on the current socket
        self._watch: ConnectWatch | None = None  # on the current socket, until reached
        self._reconnects: Reconnects | None = None  # on the current socket, once reached
        self._waited = -math.inf  # when the last wait for a reply began
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
        connection to the broker in time BrokerUnreachable, no answer in time BrokerTimeout,
        a reply that does not decode BadReply."""
        limit = math.inf if timeout is None else timeout
        start = time.monotonic()
        deadline = start + limit
        try:
            receiver = self._receiver or self._connected()  # no call once connected
            if self._watch is not None and self.contact.answered:
                # The broker answered before its handshake's event was read: hand over to
                # the Reconnects now, so that what happened since (a broker gone and back)
                # counts as before this request, not after it.
                self._watch.take_events()
                self._handed_over()
            if self._reconnects is not None and start - self._waited > LOOK_INTERVAL:
                # The socket was idle: a reconnection meanwhile took no request with it,
                # and would cost this one a needless resend. (Right after a wait, events
                # are not read: one more per request would cost the fast path.)
                self._reconnects.forget()
            send_frames(receiver.sock, request)
            while True:
                frames = self._receive(receiver, deadline, start)
                if frames is None:
                    if time.monotonic() >= deadline:
                        raise self.contact.no_answer(limit, self._watch)
                    # A REQ socket stays stuck on a lost request: start over on a new one.
                    self._discard_socket()
                    receiver = self._connected()
                else:
                    self.contact.answered = True
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
            sock, self._watch, self._reconnects = self.contact.open_watched(self._context, zmq.REQ)
            self._receiver = TimedReceiver(sock)
        return self._receiver

    def _handed_over(self) -> bool:
        """Whether the connect watch has closed (the broker was reached): then its
        Reconnects, if it kept one, watches the socket from now on."""
        watch = self._watch
        if watch is None or not watch.closed:
            return watch is None
        self._watch, self._reconnects = None, watch.kept
        return True

    def _discard_socket(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._reconnects is not None:
            self._reconnects.close()
            self._reconnects = None
        if self._receiver is not None:
            self._receiver.sock.close()
            self._receiver = None

    def _receive(
        self, receiver: TimedReceiver, deadline: float, start: float
    ) -> list[bytes] | None:
        """The next reply; None once `resend_interval` or the deadline passes first, or
        once the connection was lost and made again."""
        if self._watch is not None:
            return self._receive_watched(receiver, deadline, start)
        now = self._waited = time.monotonic()
        end = min(now + self.resend_interval, deadline)
        while now < end:
            # Waits of LOOK_MS at most, the reconnections looked at between them: a reply
            # that comes sooner (most do) costs no look.
            wait = end - now
            frames = receiver.recv(LOOK_MS if wait > LOOK_INTERVAL else poll_ms(wait))
            if frames is not None:
                return frames
            if self._reconnects is not None and self._reconnects.reconnected():
                return None
            now = time.monotonic()
        return None

    def _receive_watched(
        self, receiver: TimedReceiver, deadline: float, start: float
    ) -> list[bytes] | None:
        """`_receive` while the broker has not been reached: the request waits in the socket
        until it connects (no resend needed), BrokerUnreachable once the connect timeout
        passes first, and the plain `_receive` for the rest of the wait once reached."""
        watch = self._watch
        assert watch is not None
        give_up = self.contact.connect_deadline(start)
        now = time.monotonic()
        while now < deadline:
            # Reached, here or in the wait that read the last reply (the handshake's event
            # and that reply came in one poll): from now on the plain `_receive`, which
            # resends each `resend_interval`. A closed watch kept would wait out the whole
            # deadline for a request the broker lost.
            if self._handed_over():
                return self._receive(receiver, deadline, start)
            if now >= give_up:
                raise watch.unreachable(give_up - start)
            if watch.readable(poll_ms(min(deadline, give_up) - now)):
                return receiver.recv(0)
            now = time.monotonic()
        return None


def deliver(
    url: str,
    request: list[bytes],
    task_id: str,
    timeout: float,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    resend_interval: float = RESEND_INTERVAL,
    keys: PeerKeys | None = None,
) -> TaskCompleted | None:
    """Send the EXECUTE `request` of task `task_id` and return once the broker holds the
    task (in its store, if it has one), without waiting for its answer. A STATUS `stored`
    follows the EXECUTE on the same DEALER socket; the broker handles one connection's
    messages in order and answers it once its store has written what came before it
    (protocol.md 3.10), so its STATUS_REPLY says the EXECUTE was taken and kept: a broker
    killed after it still has the task. Both are sent again after `resend_interval` without a
    reply, or at once when the connection was lost and made again (a restarted broker).
    Returns the task's TASK_COMPLETED when that comes first (a quick task, or an id
    answered lately); raises the BrokerError the broker refused it with, BrokerUnreachable
    or BrokerTimeout as `ReqLink.exchange` does."""
    context: zmq.Context[Any] = zmq.Context()
    contact = Contact(url, connect_timeout, keys)
    try:
        sock, watch, reconnects = contact.open_watched(context, zmq.DEALER)
        delivery = _Delivery(sock, watch, reconnects, [request, encode(Status(stored=True))])
        return delivery.wait(contact, task_id, timeout, resend_interval)
    finally:
        context.destroy(linger=0)  # (the monitors' sockets with it)


class _Delivery:
    """The messages of one `deliver` on its socket, and when they were last sent."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        watch: ConnectWatch | None,
        reconnects: Reconnects | None,
        messages: list[list[bytes]],
    ) -> None:
        self.sock, self.watch, self.reconnects = sock, watch, reconnects
        self.messages = messages
        self.sent = 0.0

    def send(self) -> None:
        for message in self.messages:  # the same task id again: the broker runs it once
            send_frames(self.sock, [b"", *message])
        self.sent = time.monotonic()

    def wait(
        self, contact: Contact, task_id: str, timeout: float, resend_interval: float
    ) -> TaskCompleted | None:
        watch = self.watch
        self.send()
        start = self.sent
        deadline, give_up = start + timeout, contact.connect_deadline(start)
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise contact.no_answer(timeout, watch)
            if contact.reached:
                # A reconnection (a restarted broker) is looked for every LOOK_INTERVAL.
                wake = min(deadline, self.sent + resend_interval, now + LOOK_INTERVAL)
            else:
                if watch is not None and now >= give_up:
                    raise watch.unreachable(give_up - start)
                wake = min(deadline, give_up)
            if watch.readable(poll_ms(wake - now)) if watch else _readable(self.sock, wake):
                contact.answered = True
                answer = _delivered(recv_frames(self.sock), task_id, contact.url)
                if answer is not None:
                    return answer.completed
            elif contact.reached and self._resend_due(resend_interval):
                self.send()

    def _resend_due(self, resend_interval: float) -> bool:
        """Whether `resend_interval` passed without a reply, or the connection was made
        again after it was lost (watched from when the broker was first reached)."""
        watch = self.watch
        if self.reconnects is None and watch is not None and watch.closed:
            self.reconnects = watch.kept
        if time.monotonic() >= self.sent + resend_interval:
            return True
        return self.reconnects is not None and self.reconnects.reconnected()


@dataclass(frozen=True, slots=True)
class _Delivered:
    completed: TaskCompleted | None


def _readable(sock: zmq.Socket[Any], wake: float) -> bool:
    return bool(poll([(sock, POLLIN)], poll_ms(wake - time.monotonic())))


def _delivered(frames: list[bytes], task_id: str, url: str) -> _Delivered | None:
    """What a reply to `deliver` says: taken (with the answer if the task was answered), or
    nothing yet (None); raises the broker's refusal."""
    if len(frames) < 3 or frames[0] != b"":
        return None
    for message in replies(frames[1:], url):
        if isinstance(message, TaskCompleted) and message.task_id == task_id:
            return _Delivered(message)
        if isinstance(message, Error) and message.task_id in (None, task_id):
            raise broker_error(message)
        if isinstance(message, StatusReply):
            return _Delivered(None)
    return None
