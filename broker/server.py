"""The broker's I/O shell: one ROUTER socket and its receive loop.

frames -> decode -> Scheduler -> Send commands -> frames. The only broker module that uses
zmq for serving, and the only one that reads the clock.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import zmq

from broker import protocol as p
from broker.framing import batched, log_sampled, too_large
from broker.persistence import Persistence, PersistenceConfig
from broker.scheduler import Scheduler, SchedulerConfig, Send
from broker.store import StoreError
from broker.wire import NOBLOCK, TimedReceiver, readable, recv_frames, send_routed

log = logging.getLogger(__name__)

BATCH = 256  # messages handled per wake-up before timers are checked again
STOP_CHECK = 0.1  # seconds: the longest one wait lasts, so that a stop request is seen
PEER_QUEUE_LIMIT = 100_000  # messages queued per peer, each way
CLOSE_LINGER_MS = 500  # how long a clean stop waits for the last messages to leave


@dataclass(frozen=True)
class BrokerConfig:
    bind: str = p.DEFAULT_BROKER_URL
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_message_size: int = p.DEFAULT_MAX_MESSAGE_SIZE
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    drain_timeout: float = 10.0  # seconds a stopping broker waits for running tasks
    strict: bool = False  # re-raise bugs in the loop instead of logging them (tests)


class BrokerServer:
    """Owns the ROUTER socket; run `serve()` in one thread, `request_stop()` from any."""

    def __init__(self, config: BrokerConfig, context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.persistence = Persistence(config.persistence)
        journal = self.persistence.enabled
        self.scheduler = Scheduler(replace(config.scheduler, journal=journal))
        self._context = context or zmq.Context.instance()
        self._router: zmq.Socket[Any] | None = None
        self._stop_requests = 0
        self._restored = False
        self._store_failed = False
        self._drain_until: float | None = None
        self.endpoint = ""

    def bind(self) -> str:
        """Bind the ROUTER socket; returns the endpoint (with the real port for `:*`/`:0`)."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer fails loudly
        # Far above any client's window, so no answer to a reading client is dropped; but a
        # peer that floods and never reads cannot grow the broker's memory without bound.
        router.setsockopt(zmq.SNDHWM, PEER_QUEUE_LIMIT)
        router.setsockopt(zmq.RCVHWM, PEER_QUEUE_LIMIT)
        # Up to twice the limit a sender gets a clear ERROR too_large; a larger frame is not
        # even buffered whole: ZeroMQ drops that connection.
        router.setsockopt(zmq.MAXMSGSIZE, 2 * self.config.max_message_size + 65536)
        endpoint = self.config.bind
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        try:
            router.bind(endpoint)
        except zmq.ZMQError as exc:
            router.close()
            raise OSError(f"cannot bind {self.config.bind}: {exc.strerror}") from None
        self._router = router
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def request_stop(self) -> None:
        """Ask the loop to finish: the first call lets running tasks finish (up to
        `drain_timeout`), a second stops at once. Safe from a signal handler or a thread;
        the loop sees it within STOP_CHECK."""
        self._stop_requests += 1

    def restore(self) -> None:
        """Open the durable store and take back the tasks, answers and dead letters it kept.
        Raises StoreError (an OSError) when the store cannot be used."""
        if self._restored:
            return
        self._restored = True
        now = time.monotonic()
        self.scheduler.wall_offset = time.time() - now
        self.persistence.restore(self.scheduler, now)

    def serve(self) -> None:
        """Run until `request_stop()`; then tell the nodes and close the socket."""
        self.restore()
        router = self._router or self._bind_now()
        receiver = TimedReceiver(router)
        log.info(
            "broker listening on %s (strategy %s, store %s)",
            self.endpoint,
            self.config.scheduler.strategy,
            self.config.persistence.store or "none: memory only",
        )
        due = self.scheduler.next_deadline()  # once per pass: what a pass changed, it updates
        try:
            while not self._finished():
                frames = receiver.recv(self._wait_ms(due))
                if frames is not None:
                    self._drain(router, frames)
                due = self.scheduler.next_deadline()
                now = time.monotonic()
                if now >= due:
                    self._send_all(router, self.scheduler.tick(now))
                    due = self.scheduler.next_deadline()
                self._save_when_due()
        finally:
            self._close(router)

    def _wait_ms(self, due: float) -> int:
        """How long the loop may wait for a message: until `due`, a save or the end of a
        drain, and at most STOP_CHECK."""
        now = time.monotonic()
        wait = min(
            due,
            now + STOP_CHECK,
            self._drain_until or math.inf,
            self.persistence.save_due or math.inf,
        )
        return max(0, int((wait - now) * 1000) + 1)

    def _finished(self) -> bool:
        if not self._stop_requests:
            return False
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + self.config.drain_timeout
            self.scheduler.stop_accepting()
        running = self.scheduler.running()
        if running and now >= self._drain_until:
            log.warning("%d tasks still running at shutdown: they stay pending", running)
        return self._stop_requests > 1 or not running or now >= self._drain_until

    def _save_when_due(self) -> None:
        if self.persistence.save_now(len(self.scheduler.journal), time.monotonic()):
            self._save()

    def _save(self) -> None:
        """Write what this pass changed to the store, in one transaction. A store that
        cannot be written stops the broker at once: going on would promise what it cannot
        keep."""
        changes = self.scheduler.take_journal()
        if not changes or self._store_failed:
            return
        now = time.monotonic()
        try:
            self.persistence.save(changes, time.time() - now, now)
        except StoreError as exc:
            log.critical("cannot write the store: %s; stopping at once", exc)
            self._store_failed = True
            self._stop_requests += 2

    def _bind_now(self) -> zmq.Socket[Any]:
        self.bind()
        assert self._router is not None
        return self._router

    def _close(self, router: zmq.Socket[Any]) -> None:
        try:
            self._send_all(router, self.scheduler.shutdown())
            self._save()
        finally:
            # Let the DISCONNECTs leave: linger 0 would discard whatever is still queued.
            router.close(linger=CLOSE_LINGER_MS)
            self.persistence.close()
            log.info("broker stopped")

    def _drain(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        """Handle `frames` and what else is waiting, up to BATCH messages. What one message
        causes goes out at once; several tasks to one peer leave in one message."""
        for handled in range(1, BATCH + 1):
            sends = self._dispatch(frames)
            if sends:
                self._send_all(router, sends)
            sends = self._settle()  # after the answers have left
            if sends:
                self._send_all(router, sends)
            # A readable check is cheaper than the zmq.Again of one more receive.
            if handled == BATCH or not readable(router):
                return
            try:
                frames = recv_frames(router, NOBLOCK)
            except zmq.Again:
                return

    def _dispatch(self, frames: list[bytes]) -> list[Send]:
        identity = frames[0]
        try:
            message = self._decode(frames)
        except p.ProtocolError as exc:
            return self._refuse(identity, exc, frames)
        if type(message) is not p.Batch:
            return self._handle(identity, message)
        sends: list[Send] = []
        for item in message.items:
            if isinstance(item, p.ProtocolError):
                sends += self._refuse(identity, item, None)
            else:
                sends += self._handle(identity, item)
        return sends

    def _refuse(
        self, identity: bytes, exc: p.ProtocolError, frames: list[bytes] | None
    ) -> list[Send]:
        sends = self.scheduler.refuse(identity, exc)
        count = self.scheduler.counters[f"refused_{exc.code}"]
        log_sampled(count, "refused message from %s: %s", identity.hex(), exc.message)
        if exc.code == p.ERR_TOO_LARGE and exc.task_id and frames and frames[3] == p.RESULT:
            # The node's work is lost, but its requesters still get their one reply.
            error = p.ErrorInfo("BadResult", exc.message)
            failed = p.Result(exc.task_id, p.EXIT_BAD_RESULT, b"null", error)
            sends += self._handle(identity, failed)
        return sends

    def _handle(self, identity: bytes, message: p.Message) -> list[Send]:
        """What `message` causes at once; the loop calls `Scheduler.settle` after sending."""
        try:
            return self.scheduler.respond(identity, message, time.monotonic())
        except Exception:
            if self.config.strict:
                raise
            self.scheduler.counters["internal_errors"] += 1
            log.exception("bug while handling %s from %s", type(message).__name__, identity.hex())
            return []

    def _settle(self) -> list[Send]:
        try:
            return self.scheduler.settle(time.monotonic())
        except Exception:
            if self.config.strict:
                raise
            self.scheduler.counters["internal_errors"] += 1
            log.exception("bug while settling the last message")
            return []

    def _decode(self, frames: list[bytes]) -> p.Message:
        if len(frames) < 3 or frames[1] != b"":
            raise p.ProtocolError(p.ERR_MALFORMED, "expected an empty delimiter frame first")
        if len(frames) == 6:  # one task: four frames from the tag on, summed without map()
            size = len(frames[2]) + len(frames[3]) + len(frames[4]) + len(frames[5])
        else:
            size = sum(map(len, frames)) - len(frames[0])  # from the tag on
        if size > self.config.max_message_size:
            raise too_large(frames, size, self.config.max_message_size)
        return p.decode(frames[2:])

    def _send_all(self, router: zmq.Socket[Any], sends: list[Send]) -> None:
        if len(sends) == 1:  # the common case when tasks are few: no grouping, no batching
            send = sends[0]
            sends = self._send_one(router, send.identity, send.message)
        while sends:
            by_peer: dict[bytes, list[p.Message]] = {}
            for send in sends:
                by_peer.setdefault(send.identity, []).append(send.message)
            sends = []
            for identity, messages in by_peer.items():
                sends += self._send_to(router, identity, messages)

    def _send_one(self, router: zmq.Socket[Any], identity: bytes, message: p.Message) -> list[Send]:
        try:
            send_routed(router, identity, p.encode(message), NOBLOCK)
        except zmq.ZMQError:
            return self._send_to(router, identity, [message])  # it reports what went wrong
        return []

    def _send_to(
        self, router: zmq.Socket[Any], identity: bytes, messages: list[p.Message]
    ) -> list[Send]:
        """Send `messages` to one peer in order; what a vanished peer's loss causes."""
        for frames in batched(messages):
            try:
                send_routed(router, identity, frames, NOBLOCK)
            except zmq.Again:
                self.scheduler.counters["send_blocked"] += 1
                count = self.scheduler.counters["send_blocked"]
                log_sampled(
                    count,
                    "dropped a message to %s: it reads nothing and its queue is full",
                    identity.hex(),
                )
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log.info("peer %s is gone; dropped %d messages", identity.hex(), len(messages))
                return self.scheduler.unreachable(identity, time.monotonic())
        return []
