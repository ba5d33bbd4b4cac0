"""What goes into the core and what comes out of it.

Events are facts, named in the past tense; `Scheduler.handle(event, now)` takes each one.
Commands are imperatives; `handle` and `tick` return them in the order they must be carried
out: `Send` a message to a peer, or a store change (broker.core.journal).
"""

from __future__ import annotations

from typing import TypeAlias

from msgspec import Struct

from broker.core.deadletters import DeadLetter
from broker.core.journal import Change, PendingTask
from broker.protocol import Message, RemoteProtocolError, TaskCompleted

# ------------------------------------------------------------------------------- events


class Received(Struct, frozen=True, gc=False):
    """A message from the peer with ROUTER identity `peer` arrived and decoded."""

    peer: bytes
    message: Message
    # With CURVE, the sender's key (Z85), the scope of the tasks it names (protocol.md
    # 5.11); None without CURVE, where the messages name their `client`.
    key: str | None = None
    # Whether the sender may name any scope's task in a CANCEL (a CURVE admin key, or
    # anyone when the broker has no CURVE) and see every task's failures in STATUS.
    admin: bool = True


class Undecodable(Struct, frozen=True, gc=False):
    """A message from `peer` arrived that does not decode; `command` is its command frame
    when it had one (an oversized RESULT still fails its task)."""

    peer: bytes
    error: RemoteProtocolError
    command: bytes | None = None


class PeerGone(Struct, frozen=True, gc=False):
    """A send to `peer` failed: it is no longer connected."""

    peer: bytes


class SendDropped(Struct, frozen=True, gc=False):
    """A message to `peer` was dropped: the peer reads nothing and its queue is full."""

    peer: bytes


class HandlerFailed(Struct, frozen=True, gc=False):
    """Handling an event (named by `what`) raised: a bug, logged by the shell, counted here."""

    what: str


class Sent(Struct, frozen=True, gc=False):
    """The commands of the last event have been carried out. The bookkeeping that waited so
    that answers could leave first (see `Scheduler.deferred`) may run now."""


class Restored(Struct, frozen=True, gc=False):
    """A durable store gave back what it kept: pending tasks (by submission order), kept
    answers with the time each was kept (oldest first) and dead letters (in failure order);
    `next_seq` is above every submission number it holds."""

    pending: list[PendingTask]
    answers: list[tuple[TaskCompleted, float]]
    dead_letters: list[DeadLetter]
    next_seq: int
    # The node processes registered when the store was last written: (name, host, pid).
    nodes: list[tuple[str, str, int]] = []


class HandedOver(Struct, frozen=True, gc=False):
    """The changes the commands so far carried were handed to the store, which writes them
    later, in order: the RESULTs handled until now are confirmed to their nodes (STORED,
    protocol.md 3.22) at the Committed of this handover."""


class Committed(Struct, frozen=True, gc=False):
    """The store has written the oldest handover not committed yet, or, with none waiting,
    every change the commands so far carried: the RESULTs these cover may be confirmed to
    their nodes (STORED, protocol.md 3.22)."""


class StopRequested(Struct, frozen=True, gc=False):
    """The broker is stopping: no new task is accepted or started; running ones may finish."""


class Stopped(Struct, frozen=True, gc=False):
    """The broker is about to close its socket: the nodes must be told."""


Event: TypeAlias = (
    Received
    | Undecodable
    | PeerGone
    | SendDropped
    | HandlerFailed
    | Sent
    | Restored
    | Committed
    | HandedOver
    | StopRequested
    | Stopped
)

# ------------------------------------------------------------------------------ commands


class Send(Struct, frozen=True, gc=False):
    """Send `message` to the peer with ROUTER identity `peer`."""

    peer: bytes
    message: Message


Command: TypeAlias = Send | Change
