"""Store: the broker's embedded durable store, SQLite (standard library) in WAL mode.

It keeps what must survive a restart: pending tasks, kept answers and the dead-letter queue.
The server applies the scheduler's journal (`broker.core.journal`) in batches, one
transaction each. Once `apply` returns, the transaction is in the WAL file (at least in the
OS page cache): it survives the broker being killed, even by `kill -9`. With
`synchronous=NORMAL` (the default) an OS crash or power loss may lose the last transactions;
`durable_sync=True` (`synchronous=FULL`, an fsync per commit) keeps them. Times: the store
keeps Unix time, monotonic + `wall_offset` (`time.time() - time.monotonic()` of the caller).

Faults are loud: a file that is not a valid store is refused at open, a row that does not fit
the protocol's limits is refused at load, and a write that fails raises StoreError with
SQLite's own reason, having written nothing of its batch.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from broker.core.events import Restored
from broker.core.journal import Change
from broker.store import rows, schema
from broker.store.changes import NetChanges
from broker.store.errors import StoreError, store_write_failed
from broker.store.migration import migrate
from broker.store.rows import BadRow
from broker.store.schema import ELSEWHERE

log = logging.getLogger(__name__)

T = TypeVar("T")


class Store:
    """An open store. One thread at a time may use it (the server's loop); one process at a
    time may open it (the file stays locked until `close`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, durable_sync: bool = False) -> Store:
        """The store at `path`; a new one only where no file exists (its directory must).
        Raises StoreError if the file is not a store of this or an older schema, is damaged,
        or is in use by another process; a store of an older schema is migrated."""
        path = Path(path)
        created = _create_file(path)
        try:
            conn = sqlite3.connect(
                path.resolve().as_uri() + "?mode=rw",
                uri=True,
                timeout=0,  # a store locked by another broker is refused at once
                isolation_level=None,  # transactions are explicit: BEGIN ... COMMIT
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            _remove_created(path, created)
            raise _refusal(path, exc) from exc
        try:
            _prepare(conn, path, created, durable_sync)
        except BaseException:
            conn.close()
            _remove_created(path, created)
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def apply(self, changes: Sequence[Change], wall_offset: float) -> None:
        """Record `changes` (in journal order) in one transaction. Raises StoreError, having
        recorded none of them, if the write fails (e.g. the disk is full)."""
        if changes:
            net = NetChanges()
            for change in changes:
                net.add(change)
            self._transaction(lambda: net.write(self._conn, wall_offset), "recording changes")

    def load(self, wall_offset: float, now: float) -> Restored:
        """Everything the store holds, as the scheduler's Restored event. Times come back
        as monotonic times of this process, never later than `now` (in case the wall clock
        was set back). Raises StoreError if a row does not hold what the broker writes."""
        try:
            return rows.restored(self._conn, wall_offset, now)
        except BadRow as exc:
            raise StoreError(
                f"cannot open store {self.path}: {exc}; restore a backup {ELSEWHERE}"
            ) from None
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot read store {self.path}: {exc}; restore a backup {ELSEWHERE}"
            ) from exc

    def prune_results(
        self,
        older_than: float,
        wall_offset: float,
        *,
        keep: int | None = None,
        pinned: Collection[str] = (),
    ) -> int:
        """Forget kept answers that finished at or before `older_than` (monotonic), oldest
        first up to the first newer one (as the scheduler's results do); then, with `keep`,
        all but the newest `keep`. The answers of `pinned` task ids (inputs that pending
        tasks still need, protocol.md 5.8) stay. Returns how many were forgotten."""
        spare = ""
        params: tuple[Any, ...] = ()
        if pinned:
            spare = " AND task_id NOT IN (SELECT value FROM json_each(?))"
            params = (orjson.dumps(list(pinned)).decode(),)

        def prune() -> int:
            newer = "SELECT pos FROM results WHERE finished_at > ? ORDER BY pos LIMIT 1"
            row = self._conn.execute(newer, (older_than + wall_offset,)).fetchone()
            where = "WHERE 1" if row is None else "WHERE pos < ?"
            sql = f"DELETE FROM results {where}{spare}"
            removed: int = self._conn.execute(sql, (*(row or ()), *params)).rowcount
            if keep is not None:
                newest = "SELECT pos FROM results ORDER BY pos DESC LIMIT 1 OFFSET ?"
                sql = f"DELETE FROM results WHERE pos <= ({newest}){spare}"
                removed += self._conn.execute(sql, (max(keep, 0), *params)).rowcount
            return removed

        return self._transaction(prune, "forgetting expired answers")

    def trim_dead_letters(self, keep: int) -> int:
        """Drop all but the newest `keep` dead letters (as the scheduler's dead-letter queue
        does; the JSON-lines log keeps them all). Returns how many were dropped."""
        return self._transaction(
            lambda: self._keep_newest("dead_letters", keep), "trimming the dead letters"
        )

    def _keep_newest(self, table: str, keep: int) -> int:
        newest = f"SELECT pos FROM {table} ORDER BY pos DESC LIMIT 1 OFFSET ?"
        sql = f"DELETE FROM {table} WHERE pos <= ({newest})"
        return int(self._conn.execute(sql, (max(keep, 0),)).rowcount)

    def _transaction(self, work: Callable[[], T], what: str) -> T:
        """`work` in one transaction. On failure SQLite may have rolled the transaction
        back already (a failed COMMIT, a full disk): ROLLBACK runs only if one is still
        open, and the error raised is the one that made the work fail."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                result = work()
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            raise store_write_failed(self.path, exc, what) from exc
        return result

    def _rollback(self) -> None:
        """Roll back the open transaction, unless SQLite has already. It runs while the
        cause propagates: a failure of the ROLLBACK itself is logged, never raised over it."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("store %s: ROLLBACK failed too: %s", self.path, exc)


def _create_file(path: Path) -> bool:
    """Create an empty file at `path` if none exists (True), so that SQLite never turns a
    file that exists into a store."""
    if not path.parent.is_dir():
        raise StoreError(
            f"cannot open store {path}: directory {path.parent} does not exist; create it "
            "or pick another --store path"
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        if not path.is_file():
            raise StoreError(
                f"cannot open store {path}: it is not a regular file {ELSEWHERE}"
            ) from None
        if path.stat().st_size == 0:
            raise StoreError(
                f"cannot open store {path}: the file is empty (0 bytes), not a zbroker "
                f"store (was it truncated?); restore it from a backup, delete it to start "
                f"a new store, {ELSEWHERE}"
            ) from None
        return False
    except OSError as exc:
        raise StoreError(
            f"cannot create store {path}: {exc.strerror}; check its directory's "
            "permissions or pick another --store path"
        ) from None
    return True


def _remove_created(path: Path, created: bool) -> None:
    """Remove the files of a store this process created but could not set up, so that the
    next start does not find an empty, unusable file."""
    if created:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
            leftover.unlink(missing_ok=True)


def _prepare(conn: sqlite3.Connection, path: Path, created: bool, durable_sync: bool) -> None:
    """Lock the file, check its schema (migrating an older one), switch to WAL mode."""
    try:
        # EXCLUSIVE: the lock is kept until close, so a second broker cannot share the file
        # (and the WAL index lives in memory: no -shm file).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Checked before anything is written: a file that is not a store stays as it was.
        version = schema.version(conn, path)
        if version is None and not created:
            why = "it is an SQLite file without tables, not a zbroker store; move it away"
            raise StoreError(f"cannot open store {path}: {why} {ELSEWHERE}")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StoreError(f"cannot open store {path}: SQLite cannot use WAL mode for it; "
                             "put it on a local disk")  # fmt: skip
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable_sync else 'NORMAL'}")
        conn.execute("PRAGMA cache_size = -16384")  # KiB: keeps the pending tasks cached
        conn.execute("PRAGMA journal_size_limit = 67108864")  # a burst leaves no huge WAL
        if version is None:
            schema.create(conn)
        elif version < schema.SCHEMA_VERSION:
            _migrate(conn, path, version)
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock now; it is held until close
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _refusal(path, exc) from exc


def _migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    try:
        migrated = migrate(conn, version)
    except BadRow as exc:
        raise StoreError(
            f"cannot open store {path}: {exc} (migrating schema version {version}); restore "
            f"a backup {ELSEWHERE}"
        ) from None
    defaulted = migrated.defaulted
    log.info(
        "store %s: schema version %d migrated to %d (%d pending tasks, %d dead letters%s)",
        path,
        version,
        schema.SCHEMA_VERSION,
        migrated.tasks,
        migrated.dead_letters,
        f"; {defaulted} task timeouts beyond the protocol's limits left to the broker's default"
        if defaulted
        else "",
    )


def _refusal(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        why = "it is in use by another process (another zbroker?); stop that one"
    elif "not a database" in text:
        why = "it is not an SQLite file, so not a zbroker store; move it away"
    elif getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        why = f"disk full ({text}); free space"
    else:
        why = f"{text}; check the file and its directory"
    return StoreError(f"cannot open store {path}: {why} {ELSEWHERE}")
