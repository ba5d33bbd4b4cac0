"""The broker's I/O shell: one ROUTER socket, its receive loop, the clock and the store.

frames -> decode -> event -> `Scheduler.handle` -> commands -> frames (and store changes).
The only broker module that serves on zmq and the only one that reads the clock; all
scheduling is in broker.core, which it drives and never reaches into.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import zmq

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import (
    Command,
    Committed,
    Event,
    HandedOver,
    HandlerFailed,
    PeerGone,
    Received,
    Send,
    SendDropped,
    Sent,
    Stopped,
    StopRequested,
    Undecodable,
)
from broker.core.journal import Change
from broker.core.liveness import LoopClock
from broker.core.metrics import Histogram
from broker.core.scheduler import Scheduler
from broker.gate import Gate
from broker.outbox import DEFAULT_BUDGET, PIPE_LIMIT, Outbox, PeerGoneError
from broker.protocol.frames import NOBLOCK, TimedReceiver, readable, recv_frames, send_routed
from broker.security import BrokerKeys
from broker.store import Persistence, PersistenceConfig, StoreError
from broker.tracing import BrokerSpans, process as process_tracing
from broker.trim import TRIM_EVERY, trim

log = logging.getLogger(__name__)

BATCH = 256  # messages handled per wake-up before timers are checked again
# While messages keep waiting, what they cause is sent together every this many commands
# (and when none waits): several RUNs to one node, or answers to one client, share one
# message (protocol.md 2.4) however many messages brought them.
SEND_EVERY = 256
STOP_CHECK = 0.1  # seconds: the longest one wait lasts, so that a stop request is seen
PEER_QUEUE_LIMIT = 100_000  # messages queued from one peer
FLUSH_EVERY = 0.005  # seconds between tries to send what the outbox holds
PACKED_PEERS = 65_536  # clients remembered as reading packed answers (protocol.md 2.5)
ACK_CHECK = 0.002  # seconds between looks for the store's acknowledgements while it writes
CLOSE_LINGER_MS = 500  # how long a clean stop waits for the last messages to leave
EXIT_STORE_FAILED = 74  # (EX_IOERR) the store failed while the broker ran

_SENT = Sent()
_COMMITTED = Committed()
_HANDED_OVER = HandedOver()


@dataclass(frozen=True)
class BrokerConfig:
    bind: str = p.DEFAULT_BROKER_URL
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_message_size: int = p.DEFAULT_MAX_MESSAGE_SIZE
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    drain_timeout: float = 10.0  # seconds a stopping broker waits for running tasks
    strict: bool = False  # re-raise bugs and check the core's invariants after every event
    keys: BrokerKeys | None = None  # CURVE: encrypted, and only the authorized keys let in
    # Bytes held for one peer that does not take them (broker/outbox.py); past it, dropped.
    max_queued_bytes_per_peer: int = DEFAULT_BUDGET
    backlog: int | None = None  # the listen backlog; None: the system's limit


def system_backlog() -> int:
    """The most connections the system lets wait to be accepted (Linux: somaxconn); 4096,
    Linux's default since 5.4, where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


class ShellStats:
    """What the shell adds to STATUS_REPLY `metrics` (protocol.md 3.11): messages and bytes
    each way (from the tag frame on), the store's group commits: how many, how many changes
    they wrote, and how long each took; and how long each give-back of freed memory took."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "commit_seconds",
        "messages_in",
        "messages_out",
        "store_batches",
        "store_changes",
        "store_largest_batch",
        "trims",
    )

    def __init__(self) -> None:
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.store_batches = self.store_changes = self.store_largest_batch = 0
        self.commit_seconds = Histogram()
        self.trims = Histogram()  # how long each give-back of freed memory took (broker.trim)

    def sent(self, frames: list[bytes]) -> None:
        self.messages_out += 1
        self.bytes_out += sum(map(len, frames))

    def view(self) -> dict[str, Any]:
        return {
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "store": {
                "batches": self.store_batches,
                "changes": self.store_changes,
                "largest_batch": self.store_largest_batch,
                "commit_seconds": self.commit_seconds.view(),
            },
            "trim_seconds": self.trims.view(),
        }


class BrokerServer:
    """Owns the ROUTER socket; run `serve()` in one thread, `request_stop()` from any."""

    def __init__(self, config: BrokerConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.persistence = Persistence(config.persistence)
        self._wall_offset = time.time() - time.monotonic()
        start_grace = config.scheduler.start_grace is not False
        scheduler_config = replace(
            config.scheduler, journal=self.persistence.enabled, start_grace=start_grace
        )
        self.stats = ShellStats()
        self.scheduler = Scheduler(
            scheduler_config,
            wall_offset=self._wall_offset,
            now=time.monotonic(),
            shell_status=self._shell_status,
        )
        self._context = context or zmq.Context.instance()
        self._router: zmq.Socket[Any] | None = None
        self._authenticator: Any = None  # the ZAP handler's thread, with CURVE
        # With CURVE, each message's key and role are checked (broker/gate.py), and
        # messages are received through the gate, which reads the key.
        self._gate = None if config.keys is None else Gate(config.keys.authorized)
        self._receive = recv_frames if self._gate is None else self._gate.receive
        self._changes: list[Change] = []  # for the store, written once per group commit
        self._clock = LoopClock()  # how late the loop runs the core's timers: its stalls
        self._trim_at = time.monotonic() + TRIM_EVERY  # see broker.trim
        # What peers' pipes cannot take yet, bounded in bytes per peer.
        self._outbox = Outbox(config.max_queued_bytes_per_peer)
        # Peers that sent packed EXECUTEs, newest last: their answers go packed too
        # (protocol.md 2.5). At most PACKED_PEERS: one forgotten is answered in pairs.
        self._packed_peers: OrderedDict[bytes, None] = OrderedDict()
        self._stop_requests = 0
        self._restored = False
        self._drain_until: float | None = None
        self.store_failure: StoreError | None = None  # why the store stopped the broker
        self._strict = config.strict
        self._max_size = config.max_message_size
        self.endpoint = ""
        # Spans of traced tasks, when this process traces (broker.tracing): else None,
        # and tracing costs each message one test.
        tracing = process_tracing()
        self._spans = None if tracing is None else BrokerSpans(tracing)

    # ------------------------------------------------------------------ setup

    def _shell_status(self) -> dict[str, Any]:
        """What the shell adds to STATUS_REPLY `metrics`: its counts, and with CURVE the
        handshakes refused for unknown keys."""
        view = self.stats.view()
        view.update(self._outbox.view())
        keys = self.config.keys
        view["curve"] = keys is not None
        if keys is not None:
            view["refused_keys"] = keys.authorized.refused
        return view

    def bind(self) -> str:
        """Bind the ROUTER socket; returns the endpoint (with the real port for `:*`/`:0`)."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails loudly
        # A short pipe to each peer: what it does not take waits in the outbox, which
        # counts bytes. A peer that floods and never reads cannot grow memory without bound.
        router.setsockopt(zmq.SNDHWM, PIPE_LIMIT)
        router.setsockopt(zmq.RCVHWM, PEER_QUEUE_LIMIT)
        # Up to twice the limit a sender gets a clear ERROR too_large; a larger frame is not
        # even buffered whole: ZeroMQ drops that connection.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_message_size + 65536)
        # Nodes that start (or come back) together queue to be accepted: past the backlog
        # their connections fail and retry, and their REGISTERs wait.
        router.setsockopt(zmq.BACKLOG, self.config.backlog or system_backlog())
        if self.config.keys is not None:
            self._authenticator = self.config.keys.serve(self._context, router)
        endpoint = self.config.bind
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            router.close()
            if self._authenticator is not None:
                self._authenticator.stop()
            raise OSError(f"cannot bind {self.config.bind}: {exc.strerror}") from None
        self._router = router
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def restore(self) -> None:
        """Open the durable store and give the core back what it kept. Raises StoreError
        when the store cannot be used."""
        if self._restored:
            return
        self._restored = True
        now = time.monotonic()
        restored = self.persistence.open(self._wall_offset, now)
        if restored is not None:
            self._handle_all(restored, now)

    def request_stop(self) -> None:
        """Ask the loop to finish: the first call lets running tasks finish (up to
        `drain_timeout`), a second stops at once. Safe from a signal handler or a thread;
        the loop sees it within STOP_CHECK."""
        self._stop_requests += 1

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Run until `request_stop()`; then tell the nodes and close the socket."""
        self.restore()
        router = self._router or self._bind_now()
        receiver = TimedReceiver(router, self._receive)
        log.info(
            "broker listening on %s (strategy %s, store %s)",
            self.endpoint,
            self.config.scheduler.strategy,
            self.config.persistence.store or "none: memory only",
        )
        scheduler = self.scheduler
        try:
            while not self._finished():
                frames = receiver.recv(self._wait_ms(scheduler.next_deadline()))
                if frames is not None:
                    self._drain(router, frames)
                now = time.monotonic()
                if now >= scheduler.next_deadline():
                    self._carry_out(router, self._tick(router, now))
                if self._outbox.held:
                    self._flush(router)
                self._save_when_due()
                if now >= self._trim_at:
                    self._trim(now)
        finally:
            self._close(router)

    def _drain(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        """Handle `frames` and what else is waiting, up to BATCH messages. A message alone
        is answered before its bookkeeping (`_process`); when more wait, their commands are
        carried out together (`_collect`), every SEND_EVERY commands and at the end, and the
        store is saved when due between them."""
        self._process(router, frames)
        # After one message, a readable check is cheaper than the zmq.Again of a receive.
        # Within a drain, receives alone are cheaper: getsockopt(ZMQ_EVENTS) has libzmq
        # check its mailbox (a poll(2)) on every call, a non-blocking receive only now and then.
        if not readable(router):
            return
        collect, receive = self._collect, self._receive
        commands: list[Command] = []
        for _ in range(BATCH - 1):  # the first was `frames`
            try:
                frames = receive(router, NOBLOCK)
            except zmq.Again:
                break
            collect(frames, commands)
            if len(commands) >= SEND_EVERY:
                self._carry_out(router, commands)
                commands = []
                # A drain of BATCH messages of many tasks each lasts long enough to pass
                # the save delay: the group commit's promise (protocol.md 5.2) holds within.
                self._save_when_due()
        if commands:
            self._carry_out(router, commands)

    def _collect(self, frames: list[bytes], commands: list[Command]) -> None:
        """One message of several waiting: what it causes, and its bookkeeping, added to
        `commands` to be carried out with the others'."""
        commands += self._handle(self._event(frames), time.monotonic())
        if self.scheduler.deferred:
            commands += self._handle(_SENT, time.monotonic())

    def _process(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        """One message: its event, what the core makes of it, carried out; then, once the
        answers have left, the bookkeeping they left for later (`Sent`)."""
        event = self._event(frames)
        scheduler = self.scheduler
        if self._strict:
            commands = self._handle(event, time.monotonic())
        else:  # `_handle` without its call, on every message's way
            try:
                commands = scheduler.handle(event, time.monotonic())
            except Exception:
                commands = self._bug(type(event).__name__)
        if commands:
            self._carry_out(router, commands)
        if scheduler.deferred:
            commands = self._handle(_SENT, time.monotonic())
            if commands:
                self._carry_out(router, commands)

    def _event(self, frames: list[bytes]) -> Event:
        """The event for the frames of one message (identity first)."""
        peer = frames[0]
        if len(frames) < 3 or frames[1] != b"":
            text = "expected an empty delimiter frame before the tag (protocol.md 2.1)"
            return Undecodable(peer, p.RemoteProtocolError(p.ERR_MALFORMED, text))
        if len(frames) == 6:  # one task: four frames from the tag on, summed without map()
            size = len(frames[2]) + len(frames[3]) + len(frames[4]) + len(frames[5])
        else:
            size = sum(map(len, frames)) - len(frames[0])  # from the tag on
        stats = self.stats
        stats.messages_in += 1
        stats.bytes_in += size
        try:
            if size > self._max_size:
                raise p.oversized(frames[2:], size, self._max_size)
            message = p.decode(frames[2:])
        except p.RemoteProtocolError as exc:
            return Undecodable(peer, exc, frames[3] if len(frames) > 3 else None)
        gate = self._gate
        if gate is not None:
            refused = gate.refusal(frames[3], message)
            if refused is not None:
                return Undecodable(peer, refused, frames[3])
        if type(message) is p.Batch and message.packed and frames[3] == p.EXECUTE:
            self._packs(peer)
        if self._spans is not None:
            self._spans.received(message)
        if gate is None:
            return Received(peer, message)
        # The key scopes the tasks the message names (protocol.md 5.11).
        return Received(peer, message, gate.key, gate.role == "admins")

    def _packs(self, peer: bytes) -> None:
        """`peer` sent a packed EXECUTE: it reads packed answers (protocol.md 2.5)."""
        packed = self._packed_peers
        if peer in packed:
            packed.move_to_end(peer)
            return
        packed[peer] = None
        if len(packed) > PACKED_PEERS:
            packed.popitem(last=False)

    def _handle(self, event: Event, now: float) -> list[Command]:
        """What `event` causes. A bug in the core is logged and counted, never the end of
        the loop (unless strict, as in the tests, which also check the core after it)."""
        try:
            commands = self.scheduler.handle(event, now)
        except Exception:
            if self._strict:
                raise
            return self._bug(type(event).__name__)
        if self._strict:
            self.scheduler.check_invariants()
        return commands

    def _tick(self, router: zmq.Socket[Any], now: float) -> list[Command]:
        """What is due by `now`, with what the core needs to judge the nodes' silence (any
        input unread, any stall of this loop: broker.core.liveness); a bug in it is treated
        as in `_handle`."""
        scheduler = self.scheduler
        stall = self._clock.stall(scheduler.next_deadline(), now)
        try:
            commands = scheduler.tick(now, readable(router), stall)
        except Exception:
            if self._strict:
                raise
            return self._bug("tick")
        if self._strict:
            self.scheduler.check_invariants()
        return commands

    def _bug(self, what: str) -> list[Command]:
        """Handling `what` raised: log it with its traceback, count it, go on (called from
        the `except` clause, where the traceback is)."""
        log.exception("bug while handling %s", what)
        with contextlib.suppress(Exception):
            self.scheduler.handle(HandlerFailed(what), time.monotonic())
        return []

    def _handle_all(self, event: Event, now: float) -> None:
        """Handle an event that sends nothing (no socket yet): only store changes."""
        for command in self._handle(event, now):
            if isinstance(command, Send):
                raise AssertionError(f"{type(event).__name__} caused a send before binding")
            self._changes.append(command)

    # ------------------------------------------------------------------ commands

    def _carry_out(self, router: zmq.Socket[Any], commands: list[Command]) -> None:
        """Send the messages (several to one peer in one message, in order) and keep the
        store changes for the next group commit."""
        if self._spans is not None:
            commands = self._traced(commands)
        if not commands:
            return
        send = commands[0]
        if type(send) is not Send or len(commands) > 1:
            # With a store, a message alone comes with the changes it made: it takes the
            # common case below.
            sends = self._keep_changes(commands)
            if len(sends) != 1:
                if sends:
                    self._send_all(router, sends)
                return
            send = sends[0]
        if not self._outbox.held:  # the common case: one message, nothing waiting
            try:
                frames = p.encode(send.message)
                send_routed(router, send.peer, frames, NOBLOCK)
                stats = self.stats  # `stats.sent(frames)`, without its call
                stats.messages_out += 1
                if len(frames) == 4:  # one task, summed without map()
                    stats.bytes_out += (
                        len(frames[0]) + len(frames[1]) + len(frames[2]) + len(frames[3])
                    )
                else:
                    stats.bytes_out += sum(map(len, frames))
                return
            except zmq.ZMQError:
                pass  # _send_to says what went wrong
        self._send_to(router, send.peer, [send.message])

    def _keep_changes(self, commands: list[Command]) -> list[Send]:
        """Keep the store changes among `commands` for the next group commit; the sends."""
        sends: list[Send] = []
        changes = self._changes
        for command in commands:
            if type(command) is Send:
                sends.append(command)
            else:
                changes.append(cast(Change, command))
        return sends

    def _send_all(self, router: zmq.Socket[Any], sends: list[Send]) -> None:
        """`_carry_out` of several messages: those to each peer in one message where they
        fit, in order."""
        by_peer: dict[bytes, list[p.Message]] = {}
        for send in sends:
            by_peer.setdefault(send.peer, []).append(send.message)
        for peer, messages in by_peer.items():
            self._send_to(router, peer, messages)

    def _traced(self, commands: list[Command]) -> list[Command]:
        """`commands` with each RUN of a traced task carrying its dispatch span (the spans
        they end, ended)."""
        spans = self._spans
        assert spans is not None
        return [
            Send(c.peer, spans.sending(c.peer, c.message)) if type(c) is Send else c
            for c in commands
        ]

    def _send_to(self, router: zmq.Socket[Any], peer: bytes, messages: list[p.Message]) -> None:
        """Send `messages` to one peer in order, through the outbox; a vanished peer's loss
        is an event, and so is a message past the peer's budget."""
        outbox = self._outbox
        packed = peer in self._packed_peers or self.scheduler.takes_packed(peer)
        for frames in p.encode_many(messages, packed):
            try:
                if outbox.send(router, peer, frames):
                    self.stats.sent(frames)
                else:
                    self._handle(SendDropped(peer), time.monotonic())
            except PeerGoneError:
                log.info("peer %s is gone; dropped %d messages", peer.hex(), len(messages))
                self._gone(router, peer)
                return

    def _flush(self, router: zmq.Socket[Any]) -> None:
        """Send what the outbox holds and the pipes take now."""
        for peer in self._outbox.flush(router):
            log.info("peer %s is gone; dropped what was held for it", peer.hex())
            self._gone(router, peer)

    def _gone(self, router: zmq.Socket[Any], peer: bytes) -> None:
        self._outbox.forget(peer)
        commands = self._handle(PeerGone(peer), time.monotonic())
        if commands:
            self._carry_out(router, commands)

    # ------------------------------------------------------------------ the store

    def _trim(self, now: float) -> None:
        """Give the memory freed since the last trim back to the system (broker.trim)."""
        self._trim_at = now + TRIM_EVERY
        started = time.perf_counter()
        trim()
        self.stats.trims.observe(time.perf_counter() - started)

    def _save_when_due(self) -> None:
        persistence = self.persistence
        if persistence.writing:
            self._take_commits()
        scheduler = self.scheduler
        if (
            scheduler.awaiting_store  # a client waits for what it sent to be written
            or persistence.save_now(len(self._changes), time.monotonic())
            or (not self._changes and scheduler.confirming)  # RESULTs that changed nothing
        ):
            self._save()

    def _save(self, confirm: bool = True) -> None:
        """Hand what changed since the last save to the store, which writes it in one
        transaction; the nodes are told the RESULTs it covers (STORED) once it has
        (`_take_commits`), or at once without a store. A store that cannot be written stops
        the broker at once: going on would promise what it cannot keep."""
        changes, self._changes = self._changes, []
        scheduler = self.scheduler
        if self.store_failure is not None or not (
            changes or scheduler.confirming or scheduler.awaiting_store
        ):
            return
        now = time.monotonic()
        try:
            # A client waiting for STATUS `stored` waits for its tasks on disk, not held.
            flush = bool(scheduler.awaiting_store)
            handed = self.persistence.save(
                changes, self._wall_offset, now, scheduler.pinned_answers, flush
            )
        except StoreError as exc:
            self._store_failed(exc)
            return
        if changes:
            stats = self.stats
            stats.store_batches += 1
            stats.store_changes += len(changes)
            stats.store_largest_batch = max(stats.store_largest_batch, len(changes))
            stats.commit_seconds.observe(time.monotonic() - now)
        if not confirm:
            return
        if handed:
            self._handle(_HANDED_OVER, now)
        elif scheduler.confirming or scheduler.awaiting_store:
            self._confirm()

    def _take_commits(self, timeout: float = 0.0) -> None:
        """Confirm to the nodes the RESULTs of each batch the store has written since the
        last look, waiting up to `timeout` seconds for one."""
        try:
            written = self.persistence.committed(timeout)
        except StoreError as exc:
            self._store_failed(exc)
            return
        for _ in range(written):
            self._confirm()

    def _store_failed(self, exc: StoreError) -> None:
        log.critical("%s; stopping at once", exc)
        self.store_failure = exc
        self._stop_requests += 2

    def _confirm(self) -> None:
        """The store has written a batch (or everything, without a store): the core says
        so to the nodes."""
        if self._router is not None:
            self._carry_out(self._router, self._handle(_COMMITTED, time.monotonic()))

    # ------------------------------------------------------------------ stopping

    def _wait_ms(self, due: float) -> int:
        """How long the loop may wait for a message: until `due`, a save or the end of a
        drain, and at most STOP_CHECK."""
        now = time.monotonic()
        wait = min(
            due,
            now + (FLUSH_EVERY if self._outbox.held else STOP_CHECK),
            self._drain_until or math.inf,
            self.persistence.save_due or math.inf,
            now + ACK_CHECK if self.persistence.writing else math.inf,
        )
        return max(0, int((wait - now) * 1000) + 1)

    def _finished(self) -> bool:
        if not self._stop_requests:
            return False
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + self.config.drain_timeout
            self._handle(StopRequested(), now)
        running = self.scheduler.running()
        if running and now >= self._drain_until:
            log.warning("%d tasks still running at shutdown: they stay pending", running)
        return self._stop_requests > 1 or not running or now >= self._drain_until

    def _bind_now(self) -> zmq.Socket[Any]:
        self.bind()
        assert self._router is not None
        return self._router

    def _close(self, router: zmq.Socket[Any]) -> None:
        try:
            self._carry_out(router, self._handle(Stopped(), time.monotonic()))
            self._save(confirm=False)  # the nodes were told to go
            if self.store_failure is None:
                try:
                    self.persistence.flush()
                except StoreError as exc:
                    self._store_failed(exc)
        finally:
            # Let the DISCONNECTs leave: linger 0 would discard whatever is still queued.
            router.close(linger=CLOSE_LINGER_MS)
            if self._authenticator is not None:
                self._authenticator.stop()
            self.persistence.close()
            log.info("broker stopped")
