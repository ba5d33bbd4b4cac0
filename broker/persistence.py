"""What the broker keeps on disk: its durable store and the dead-letter log, behind one door.

The server hands over the scheduler's journal once per pass of its loop; this module writes it
to the store in one transaction and appends new dead letters to the JSON-lines log. A lock
file keeps a second broker away from a store that is in use.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from broker import journal as j
from broker.dlq_log import DeadLetterLog
from broker.scheduler import Scheduler
from broker.store import Snapshot, Store, StoreError

log = logging.getLogger(__name__)

PRUNE_EVERY = 10.0  # seconds between deletions of expired kept answers
SAVE_BATCH = 1024  # changes written at once, without waiting for the save delay


@dataclass(frozen=True)
class PersistenceConfig:
    store: str | None = None  # SQLite file; None: memory only
    dead_letter_log: str | None = None  # JSON-lines file; None: no log
    results_ttl: float = 300.0
    results_max: int = 100_000  # kept answers in the store, as in memory
    dead_letters_max: int = 100_000
    sync_full: bool = False  # fsync every transaction (survive power loss, not only kill -9)
    save_delay: float = 0.005  # seconds changes may wait to share a transaction


class Persistence:
    def __init__(self, config: PersistenceConfig) -> None:
        self.config = config
        self._store: Store | None = None
        self._lock: IO[str] | None = None
        self._log: DeadLetterLog | None = None
        self._next_prune = 0.0
        self.save_due: float | None = None  # when the changes waiting must be written

    @property
    def enabled(self) -> bool:
        return self.config.store is not None or self.config.dead_letter_log is not None

    def open(self, wall_offset: float, now: float) -> Snapshot | None:
        """Open the store (and the log); what the store held, or None without a store."""
        if self.config.dead_letter_log is not None:
            self._log = DeadLetterLog(self.config.dead_letter_log)
        if self.config.store is None:
            return None
        self._lock = _lock(self.config.store)
        self._store = Store.open(self.config.store, durable_sync=self.config.sync_full)
        snapshot = self._store.load(wall_offset, now)
        self._next_prune = now
        return snapshot

    def restore(self, scheduler: Scheduler, now: float) -> None:
        """Open the store and give the scheduler back what it kept. Raises StoreError."""
        snapshot = self.open(scheduler.wall_offset, now)
        if snapshot is None:
            return
        scheduler.restore(
            snapshot.tasks, snapshot.results, snapshot.dead_letters, snapshot.next_seq, now
        )
        log.info(
            "store %s: %d pending tasks, %d kept answers, %d dead letters restored",
            self.config.store,
            len(snapshot.tasks),
            len(snapshot.results),
            len(snapshot.dead_letters),
        )

    def save_now(self, pending: int, now: float) -> bool:
        """Group commit: changes are written at most `save_delay` after the first of them,
        or at once when many wait, so that a busy broker pays one transaction for many
        tasks and a quiet one adds no commit to each round trip."""
        if not pending:
            return False
        if self.save_due is None:
            self.save_due = now + self.config.save_delay
        return now >= self.save_due or pending >= SAVE_BATCH

    def save(self, changes: list[j.Change], wall_offset: float, now: float) -> None:
        self.save_due = None
        if self._store is not None:
            self._store.apply(changes, wall_offset)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                older_than = now - self.config.results_ttl
                self._store.prune_results(older_than, wall_offset, keep=self.config.results_max)
                self._store.trim_dead_letters(self.config.dead_letters_max)
        if self._log is not None:
            dead = [c.entry for c in changes if type(c) is j.DeadLettered]
            if dead:
                self._log.append(dead, wall_offset)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock(store: str) -> IO[str]:
    """An exclusive lock next to the store, held while the broker runs."""
    path = Path(store + ".lock")
    try:
        handle = path.open("a+")
    except OSError as exc:
        raise StoreError(f"cannot open the store's lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StoreError(
            f"store {store} is in use by another broker (pid {owner}); give each broker its "
            "own --store PATH"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
