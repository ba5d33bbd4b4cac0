"""The store's tables (schema version 3) and the check that a file holds them.

A task's spec is kept whole, as the msgspec MessagePack encoding of its TaskSpec: a new task
option is a new field of TaskSpec and needs no new column. Times are Unix seconds. The
columns of each table are in the order of the row types of `broker.store.rows`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker.store.errors import StoreError

SCHEMA_VERSION = 3

# tasks WITHOUT ROWID: one B-tree instead of two; a task is inserted and deleted once each.
# results and dead_letters keep their order in `pos` (a row written again moves last).
TABLES = {
    "meta": "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "tasks": """CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY, spec BLOB NOT NULL, seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL, submitted_at REAL NOT NULL) WITHOUT ROWID""",
    "results": """CREATE TABLE results (
        pos INTEGER PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, exit_code INTEGER NOT NULL,
        result BLOB NOT NULL, error TEXT, attempts INTEGER NOT NULL,
        finished_at REAL NOT NULL)""",
    "dead_letters": """CREATE TABLE dead_letters (
        pos INTEGER PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, spec BLOB NOT NULL,
        attempts INTEGER NOT NULL, exit_code INTEGER NOT NULL, error TEXT,
        failed_at REAL NOT NULL)""",
    # The node processes registered (protocol.md 7.3: a restarted broker waits for them).
    "nodes": """CREATE TABLE nodes (
        name TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
        PRIMARY KEY (name, host, pid)) WITHOUT ROWID""",
}

# The columns of each table, per schema version, in order.
COLUMNS: dict[int, dict[str, str]] = {
    1: {
        "meta": "key value",
        "tasks": "task_id function payload priority seq retries timeout attempts "
        "submitted_at expires_at",
        "results": "pos task_id exit_code payload error attempts finished_at",
        "dead_letters": "pos task_id function payload priority retries timeout attempts "
        "exit_code error failed_at",
    },
    2: {
        "meta": "key value",
        "tasks": "task_id spec seq attempts submitted_at",
        "results": "pos task_id exit_code result error attempts finished_at",
        "dead_letters": "pos task_id spec attempts exit_code error failed_at",
    },
    3: {
        "meta": "key value",
        "tasks": "task_id spec seq attempts submitted_at",
        "results": "pos task_id exit_code result error attempts finished_at",
        "dead_letters": "pos task_id spec attempts exit_code error failed_at",
        "nodes": "name host pid",
    },
}

ELSEWHERE = "or start with another --store path"


def create(conn: sqlite3.Connection) -> None:
    """Create the tables of an empty file, in one transaction."""
    meta = f"INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('next_seq', 0)"
    conn.executescript(f"BEGIN; {'; '.join(TABLES.values())}; {meta}; COMMIT;")


def version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The schema version of the store in `conn` (None: the file has no tables yet). Raises
    StoreError if the file is not a zbroker store, is newer than this code or is damaged."""
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not names:
        return None
    row = None
    if "meta" in names:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        why = "it is an SQLite file but not a zbroker store; move it away"
        raise StoreError(f"cannot open store {path}: {why} {ELSEWHERE}")
    found = row[0]
    if isinstance(found, int) and found > SCHEMA_VERSION:
        why = (
            f"its schema version {found} is newer than this zbroker's ({SCHEMA_VERSION}); "
            "upgrade zbroker"
        )
        raise StoreError(f"cannot open store {path}: {why} {ELSEWHERE}")
    if not isinstance(found, int) or found not in COLUMNS:
        why = f"its schema version {found!r} is unknown; restore a backup"
        raise StoreError(f"cannot open store {path}: {why} {ELSEWHERE}")
    _check_tables(conn, path, names, COLUMNS[found])
    return found


def _check_tables(
    conn: sqlite3.Connection, path: Path, names: set[str], tables: dict[str, str]
) -> None:
    missing = sorted(set(tables) - names)
    if missing:
        why = f"it is damaged (no table {', '.join(missing)})"
        raise StoreError(f"cannot open store {path}: {why}; restore a backup {ELSEWHERE}")
    for table, expected in tables.items():
        columns = " ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
        if columns != expected:
            why = (
                f"it is damaged (table {table} has columns {columns.replace(' ', ', ')}; "
                f"expected {expected.replace(' ', ', ')})"
            )
            raise StoreError(f"cannot open store {path}: {why}; restore a backup {ELSEWHERE}")
