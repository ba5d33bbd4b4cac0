"""Persistence: what the broker keeps on disk, behind the one door the server uses.

The server hands over the scheduler's journal in batches (group commit: see `save_now`);
`save` hands a batch to the store's writer process (broker.store.writer), which writes it in
one transaction, and appends its new dead letters to the JSON-lines log. `committed` says
how many batches the store has written since it was last asked: the server confirms RESULTs
to their nodes (STORED) only then. A lock file next to the store keeps a second broker away
from it while this one runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from broker.core.config import RetryPolicy
from broker.core.events import Restored
from broker.core.journal import Change, SaveDeadLetter
from broker.store.dlq_log import DeadLetterLog
from broker.store.errors import StoreError
from broker.store.sqlite import Store
from broker.store.writer import Apply, Prune, StoreWriter

log = logging.getLogger(__name__)

PRUNE_EVERY = 10.0  # seconds between deletions of expired kept answers
SAVE_BATCH = 1024  # changes written at once, without waiting for the save delay
WRITER_GRACE = 30.0  # seconds a starting broker waits for the writer of one that died


@dataclass(frozen=True)
class PersistenceConfig:
    store: str | None = None  # SQLite file; None: memory only
    dead_letter_log: str | None = None  # JSON-lines file; None: no log
    results_ttl: float = 300.0  # seconds an answer is kept, as in memory
    results_max: int = 100_000  # kept answers in the store, as in memory
    dead_letters_max: int = 100_000  # dead letters in the store, as in memory
    sync_full: bool = False  # fsync every transaction (survive power loss, not only kill -9)
    save_delay: float = 0.005  # seconds changes may wait to share a transaction
    default_retries: int = RetryPolicy().retries  # the log's "retries" for specs without


class Persistence:
    def __init__(self, config: PersistenceConfig) -> None:
        self.config = config
        self._writer: StoreWriter | None = None
        self._lock: IO[str] | None = None
        self._log: DeadLetterLog | None = None
        self._next_prune = 0.0
        self.save_due: float | None = None  # when the changes waiting must be written

    @property
    def enabled(self) -> bool:
        """Whether the scheduler must keep a journal for this door."""
        return self.config.store is not None or self.config.dead_letter_log is not None

    def open(self, wall_offset: float, now: float) -> Restored | None:
        """Open the store (and the log); what the store held, as the event that gives it
        back to the scheduler, or None without a store. Raises StoreError, with nothing
        left open."""
        config = self.config
        try:
            if config.dead_letter_log is not None:
                self._log = DeadLetterLog(config.dead_letter_log, config.default_retries)
            if config.store is None:
                return None
            self._lock = _lock(config.store)
            store = Store.open(config.store, durable_sync=config.sync_full)
            try:
                restored = store.load(wall_offset, now)
            finally:
                store.close()  # the writer opens it: one connection holds its lock
            lock_fd = self._lock.fileno()
            self._writer = StoreWriter(config.store, durable_sync=config.sync_full, lock_fd=lock_fd)
        except BaseException:
            self.close()
            raise
        self._next_prune = now
        log.info(
            "store %s: %d pending tasks, %d kept answers, %d dead letters restored",
            config.store,
            len(restored.pending),
            len(restored.answers),
            len(restored.dead_letters),
        )
        return restored

    def save_now(self, pending_changes: int, now: float) -> bool:
        """Group commit: changes are written at most `save_delay` after the first of them,
        or at once when many wait, so that a busy broker pays one transaction for many
        tasks and a quiet one adds no commit to each round trip."""
        if not pending_changes:
            return False
        if self.save_due is None:
            self.save_due = now + self.config.save_delay
        return now >= self.save_due or pending_changes >= SAVE_BATCH

    def save(
        self,
        changes: list[Change],
        wall_offset: float,
        now: float,
        pinned: Callable[[], Collection[str]] = tuple,
        flush: bool = False,
    ) -> bool:
        """Hand `changes` (the journal, in order) to the store's writer, to be written in one
        transaction, and write their dead letters to the log; now and then have the writer
        forget expired answers, except those of `pinned()` (inputs pending tasks need).
        The writer may hold new tasks back for a moment (broker.store.young); `flush`: not
        those of this batch nor any before. Whether the store was given a batch (see
        `committed`). Raises StoreError if the log cannot be written, or if the writer has
        failed."""
        self.save_due = None
        writer = self._writer
        if writer is not None:
            prune = None
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                config = self.config
                older_than = now - config.results_ttl
                keep, most = config.results_max, config.dead_letters_max
                prune = Prune(older_than, wall_offset, keep, list(pinned()), most)
            writer.send(Apply(changes, wall_offset, prune, flush))
        if self._log is not None:
            dead = [c.entry for c in changes if type(c) is SaveDeadLetter]
            if dead:
                self._log.append(dead, wall_offset)
        return writer is not None

    @property
    def writing(self) -> bool:
        """Whether the store's writer holds requests it has not acknowledged."""
        return self._writer is not None and self._writer.outstanding > 0

    def committed(self, timeout: float = 0.0) -> int:
        """How many batches the store has written since the last call, waiting up to
        `timeout` seconds for an acknowledgement. Raises StoreError if the writer failed
        (with its reason) or is gone."""
        return 0 if self._writer is None else self._writer.acknowledged(timeout)

    def flush(self) -> int:
        """Wait until the store has written everything handed over; how many batches it
        acknowledged meanwhile. Raises StoreError as `committed` does."""
        return 0 if self._writer is None else self._writer.flush()

    def close(self) -> None:
        """Close the store, the log and the lock, each even if closing another fails."""
        with ExitStack() as stack:
            for part in (self._lock, self._log, self._writer):  # closed in reverse order
                if part is not None:
                    stack.callback(part.close)
            self._writer = self._log = self._lock = None


def take_lock(handle: IO[str], store: str) -> bool:
    """Take the lock on `store` through `handle` (its lock file, open); whether it was free.
    A lock held for a broker that is gone is held by its store writer, which is writing what
    it was given: it is waited for, up to WRITER_GRACE seconds."""
    deadline = None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if deadline is None:
            handle.seek(0)
            owner = handle.read().strip()
            if not owner.isdigit() or _alive(int(owner)):
                return False
            log.info(
                "store %s: waiting up to %.0f s for the writer of the stopped broker (pid %s) "
                "to finish",
                store,
                WRITER_GRACE,
                owner,
            )
            deadline = time.monotonic() + WRITER_GRACE
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # the writer's pid is not ours to wait on: the lock is polled


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(store: str) -> IO[str]:
    """An exclusive lock next to the store, held while the broker runs; the file holds the
    pid of the broker that holds it."""
    path = Path(store + ".lock")
    if not path.parent.is_dir():
        raise StoreError(
            f"cannot open store {store}: directory {path.parent} does not exist; create it "
            "or pick another --store path"
        )
    try:
        handle = path.open("a+")
    except OSError as exc:
        raise StoreError(
            f"cannot open the store's lock file {path}: {exc.strerror}; check that its "
            "directory exists and is writable, or start with another --store path"
        ) from None
    if not take_lock(handle, store):
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StoreError(
            f"store {store} is in use by another broker (pid {owner}); stop it, or give "
            "each broker its own --store path"
        )
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    except OSError as exc:
        handle.close()
        raise StoreError(
            f"cannot write the store's lock file {path}: {exc.strerror}; free space and "
            "restart the broker"
        ) from None
    return handle
