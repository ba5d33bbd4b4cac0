"""Store: the broker's embedded durable store, SQLite (standard library) in WAL mode.

It keeps what must survive a restart: pending tasks, kept answers and the dead-letter queue.
The server applies the scheduler's journal (`broker.journal`) once per pass of its loop, in one
transaction. Once `apply` returns, the transaction is in the WAL file (at least in the OS page
cache): it survives the broker being killed, even by `kill -9`. With `synchronous=NORMAL` (the
default) an OS crash or power loss may lose the last transactions; `durable_sync=True`
(`synchronous=FULL`, an fsync per commit) keeps them. Times: the store keeps Unix time,
monotonic + `wall_offset` (`time.time() - time.monotonic()` of the caller); SQLite does the sums.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from broker import journal as j
from broker.deadletters import DeadLetter
from broker.protocol import ErrorInfo, TaskCompleted
from broker.store_batch import NetChanges

SCHEMA_VERSION = 1
T = TypeVar("T")
V = TypeVar("V")

# Columns in the order of the dataclasses' fields, so that rows map onto them directly.
# tasks WITHOUT ROWID: one B-tree instead of two, a task is inserted and deleted once each.
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, function TEXT NOT NULL, payload BLOB NOT NULL,
    priority INTEGER NOT NULL, seq INTEGER NOT NULL, retries INTEGER NOT NULL, timeout REAL,
    attempts INTEGER NOT NULL, submitted_at REAL NOT NULL, expires_at REAL) WITHOUT ROWID;
CREATE TABLE results (
    pos INTEGER PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, exit_code INTEGER NOT NULL,
    payload BLOB NOT NULL, error TEXT, attempts INTEGER NOT NULL, finished_at REAL NOT NULL);
CREATE TABLE dead_letters (
    pos INTEGER PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, function TEXT NOT NULL,
    payload BLOB NOT NULL, priority INTEGER NOT NULL, retries INTEGER NOT NULL, timeout REAL,
    attempts INTEGER NOT NULL, exit_code INTEGER NOT NULL, error TEXT, failed_at REAL NOT NULL);
"""
_TABLES = {"meta", "tasks", "results", "dead_letters"}
# ?1: wall_offset, ?2: now. Times of past events come back no later than now.
_GET_TASKS = """SELECT task_id, function, payload, priority, seq, retries, timeout, attempts,
    min(submitted_at - ?1, ?2), expires_at - ?1 FROM tasks ORDER BY seq"""
_GET_RESULTS = """SELECT task_id, exit_code, payload, error, attempts,
    min(finished_at - ?1, ?2) FROM results ORDER BY pos"""
_GET_DEAD_LETTERS = """SELECT task_id, function, payload, priority, retries, timeout, attempts,
    exit_code, error, min(failed_at - ?1, ?2) FROM dead_letters ORDER BY pos"""


class StoreError(OSError, ValueError):
    """The store or the dead-letter log cannot be used; the message names the file and
    says what to do."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a store holds, with monotonic times of the loading process."""

    tasks: list[j.StoredTask]  # by seq (submission order)
    results: list[tuple[TaskCompleted, float]]  # (answer, finished at), oldest first
    dead_letters: list[DeadLetter]  # in failure order
    next_seq: int  # above the seq of every task the store has written


class Store:
    """An open store. One thread at a time may use it (the server's loop); one process at a
    time may open it (the file stays locked until `close`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, durable_sync: bool = False) -> Store:
        """The store at `path`, created if the file does not exist (its directory must).
        Raises StoreError if it cannot be opened, is not a store, was written by a newer
        broker or is in use by another process."""
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(
                f"cannot open store {path}: directory {path.parent} does not exist; "
                "create it or pick another --store path"
            )
        try:
            # timeout=0: a store locked by another broker is refused at once, not waited for.
            conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _refusal(path, exc) from exc
        try:
            _prepare(conn, path, durable_sync)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def apply(self, changes: Sequence[j.Change], wall_offset: float) -> None:
        """Record `changes` (in journal order) in one transaction. Raises StoreError, having
        recorded none of them, if the write fails (e.g. the disk is full)."""
        if changes:
            net = NetChanges()
            for change in changes:
                net.add(change)
            self._transaction(lambda: net.write(self._conn, wall_offset), "record changes")

    def load(self, wall_offset: float, now: float) -> Snapshot:
        """Everything the store holds. Times of past events come back no later than `now`
        (in case the wall clock was set back); queue deadlines come back as they are."""
        args = (wall_offset, now)
        tasks = [j.StoredTask(*row) for row in self._read(_GET_TASKS, args)]
        results = [
            (TaskCompleted(i, code, p, _error_info(e), a), at)
            for i, code, p, e, a, at in self._read(_GET_RESULTS, args)
        ]
        dead_letters = [
            DeadLetter(i, f, p, pr, r, t, a, code, _error_info(e), at)
            for i, f, p, pr, r, t, a, code, e, at in self._read(_GET_DEAD_LETTERS, args)
        ]
        stored = self._read("SELECT value FROM meta WHERE key = 'next_seq'", ())[0][0]
        return Snapshot(tasks, results, dead_letters, max([stored, *(t.seq + 1 for t in tasks)]))

    def prune_results(
        self, older_than: float, wall_offset: float, *, keep: int | None = None
    ) -> int:
        """Forget kept answers that finished at or before `older_than` (monotonic), oldest
        first up to the first newer one (as ResultCache.expire does); then, with `keep`, all
        but the newest `keep` (ResultCache's max_entries). Returns how many were forgotten."""

        def prune() -> int:
            newer = "SELECT pos FROM results WHERE finished_at > ? ORDER BY pos LIMIT 1"
            row = self._conn.execute(newer, (older_than + wall_offset,)).fetchone()
            sql = "DELETE FROM results" + ("" if row is None else " WHERE pos < ?")
            removed: int = self._conn.execute(sql, () if row is None else row).rowcount
            return removed + (0 if keep is None else self._keep_newest("results", keep))

        return self._transaction(prune, "forget expired answers")

    def trim_dead_letters(self, keep: int) -> int:
        """Drop all but the newest `keep` dead letters (as DeadLetters.max_entries does in
        memory; the JSON-lines log keeps them all). Returns how many were dropped."""
        return self._transaction(lambda: self._keep_newest("dead_letters", keep), "trim the DLQ")

    def _keep_newest(self, table: str, keep: int) -> int:
        newest = f"SELECT pos FROM {table} ORDER BY pos DESC LIMIT 1 OFFSET ?"
        sql = f"DELETE FROM {table} WHERE pos <= ({newest})"
        return int(self._conn.execute(sql, (max(keep, 0),)).rowcount)

    def _transaction(self, work: Callable[[], T], what: str) -> T:
        try:
            self._conn.execute("BEGIN")
            try:
                result = work()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {self.path}: could not {what}: {exc}; check the disk (space, "
                "permissions) and restart the broker"
            ) from exc
        return result

    def _read(self, sql: str, args: tuple[float, ...]) -> list[Any]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {self.path}: cannot read it: {exc}; restore it from a backup or "
                "start with another --store path"
            ) from exc


def _error_info(text: str | None) -> ErrorInfo | None:
    return None if text is None else ErrorInfo(**orjson.loads(text))


def _prepare(conn: sqlite3.Connection, path: Path, durable_sync: bool) -> None:
    """Lock the file, check (or create) the schema, then switch to WAL mode."""
    try:
        # EXCLUSIVE: the lock is kept until close, so a second broker cannot share the file
        # (and the WAL index lives in memory: no -shm file).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if names:
            _check_schema(conn, path, names)
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StoreError(f"store {path}: SQLite cannot use WAL mode for it; try a local disk")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable_sync else 'NORMAL'}")
        conn.execute("PRAGMA cache_size = -16384")  # KiB: keeps the pending tasks cached
        conn.execute("PRAGMA journal_size_limit = 67108864")  # a burst leaves no huge WAL
        if not names:
            meta = f"INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('next_seq', 0)"
            conn.executescript(f"BEGIN; {_SCHEMA}; {meta}; COMMIT;")
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock now; it is held until close
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _refusal(path, exc) from exc


def _check_schema(conn: sqlite3.Connection, path: Path, names: set[str]) -> None:
    sql = "SELECT value FROM meta WHERE key = 'schema_version'"
    row = conn.execute(sql).fetchone() if "meta" in names else None
    version = row[0] if row is not None and isinstance(row[0], int) else 0
    if version < 1:
        why = "it is an SQLite file but not a zbroker store; move that file away"
    elif version > SCHEMA_VERSION:
        why = f"its schema {version} is newer than this zbroker's ({SCHEMA_VERSION}); upgrade"
    elif not names >= _TABLES:
        why = f"it is damaged (no {', '.join(sorted(_TABLES - names))}); restore a backup"
    else:
        return
    raise StoreError(f"cannot open store {path}: {why} or start with another --store path")


def _refusal(path: Path, exc: sqlite3.Error) -> StoreError:
    if "locked" in str(exc) or "busy" in str(exc):
        why = "it is in use by another process (another zbroker?); stop that one"
    elif "not a database" in str(exc):
        why = "it is not a zbroker store; move that file away"
    else:
        why = f"{exc}; check the file and its directory"
    return StoreError(f"cannot open store {path}: {why} or start with another --store path")
