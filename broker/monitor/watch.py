"""Watch: a broker read through the control protocol, once a second, in a thread of its own.

It keeps the latest STATUS_REPLY body, the newest dead letters, and an hour of points of
history (`derive.point`), so the broker keeps no history itself and its loop stays lean:
one STATUS a second, and a DLQ list every DLQ_EVERY seconds. Readers (the web server's
threads) take snapshots under a lock, and wait for the next one with `wait_newer`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.monitor.derive import point
from broker.security import PeerKeys
from client.control import ControlClient
from client.errors import ClientError
from client.link import ReqLink

log = logging.getLogger(__name__)

HISTORY = 3600  # points kept: an hour at one a second
WINDOW = 5  # polls between the two snapshots a point's latency quantiles compare (at most)
DLQ_EVERY = 5.0  # seconds between reads of the dead-letter queue
DLQ_SHOWN = 50  # dead letters read each time (the newest)


@dataclass(frozen=True)
class Snapshot:
    """What the watch knows at one poll. `error` says why the broker did not answer (then
    `status` is the last body it did give, or None)."""

    seq: int
    at: float  # Unix time of the poll
    status: dict[str, Any] | None
    error: str | None
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    dead_letters_total: int = 0
    point: dict[str, Any] | None = None  # this poll's point of history (None: no answer)


class Watch:
    def __init__(
        self,
        url: str,
        interval: float = 1.0,
        *,
        timeout: float = 2.0,
        keys: PeerKeys | None = None,
    ) -> None:
        self.url = url
        self.interval = interval
        self._timeout = timeout
        self._keys = keys  # CURVE, for a broker started with --curve
        self._link: ReqLink | None = None
        self._asking = threading.Lock()  # one request at a time on the link
        self._changed = threading.Condition()
        self._snapshot = Snapshot(0, time.time(), None, "not asked yet")
        self._points: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._recent: deque[dict[str, Any]] = deque(maxlen=WINDOW + 1)  # bodies, for points
        self._dlq_read = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ running

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 5)
        with self._asking:
            if self._link is not None:
                self._link.close()
                self._link = None

    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stopping.is_set():
            self.poll()
            next_poll = max(next_poll + self.interval, time.monotonic())
            self._stopping.wait(max(0.0, next_poll - time.monotonic()))

    def poll(self) -> Snapshot:
        """Ask the broker now; the new snapshot (also for `latest`)."""
        at = time.time()
        previous = self._snapshot
        status: dict[str, Any] | None = previous.status
        dead, total = previous.dead_letters, previous.dead_letters_total
        error = None
        new_point = None
        try:
            status = self._ask(lambda control: control.status(self._timeout))
            if at - self._dlq_read >= DLQ_EVERY:
                listed = self._ask(lambda c: c.dead_letters(DLQ_SHOWN, timeout=self._timeout))
                dead, total = listed.entries, listed.total
                self._dlq_read = at
        except ClientError as exc:
            error = f"{exc}"
            if previous.error is None:
                log.warning("broker %s does not answer: %s", self.url, exc)
        if error is None:
            if previous.error is not None and previous.seq:
                log.info("broker %s answers again", self.url)
            assert status is not None
            earlier = self._recent[0] if self._recent else None
            self._recent.append(status)
            new_point = point(status, earlier, at)
        snapshot = Snapshot(previous.seq + 1, at, status, error, dead, total, new_point)
        with self._changed:
            self._snapshot = snapshot
            if new_point is not None:
                self._points.append(new_point)
            self._changed.notify_all()
        return snapshot

    def _ask(self, request: Callable[[ControlClient], Any]) -> Any:
        with self._asking:
            if self._link is None:
                self._link = ReqLink(self.url, connect_timeout=self._timeout, keys=self._keys)
            try:
                return request(ControlClient(self._link))
            except ClientError:
                self._link.close()  # a fresh socket for the next poll
                self._link = None
                raise

    # ------------------------------------------------------------------ reading

    def latest(self) -> Snapshot:
        with self._changed:
            return self._snapshot

    def history(self, seconds: float) -> list[dict[str, Any]]:
        """The points of the last `seconds`, oldest first."""
        with self._changed:
            points = list(self._points)
        since = time.time() - seconds
        return [p for p in points if p["at"] >= since]

    def wait_newer(self, seq: int, timeout: float) -> Snapshot | None:
        """The first snapshot after number `seq`, waiting up to `timeout` seconds for it;
        None if none came (or the watch stops)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._snapshot.seq > seq or self._stopping.is_set(), timeout
            )
            return self._snapshot if self._snapshot.seq > seq else None

    # ------------------------------------------------------------------ acting

    def replay(self, task_id: str | None) -> dict[str, list[str]]:
        """Replay a dead letter (None: all); the next poll reads the queue again."""
        self._dlq_read = 0.0
        result: dict[str, list[str]] = self._ask(lambda c: c.replay(task_id, timeout=self._timeout))
        return result

    def purge(self, task_id: str | None) -> int:
        """Forget a dead letter (None: all); the next poll reads the queue again."""
        self._dlq_read = 0.0
        purged: int = self._ask(lambda c: c.purge(task_id, timeout=self._timeout))
        return purged
