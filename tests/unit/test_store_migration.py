"""A store of an older schema (1 or 2) is migrated to the current one at open, in one
transaction, with one log line; one that does not fit the protocol's limits is refused and
left as it was."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from broker.core.deadletters import DeadLetter
from broker.core.events import Restored
from broker.core.journal import PendingTask, SaveAnswer, SaveNode, SaveTask
from broker.protocol import ErrorInfo, TaskCompleted, TaskSpec
from broker.store import Store, StoreError
from tests.store_helpers import OFFSET, answer, load

# The version-1 schema, as a version-1 broker creates it.
V1_SCHEMA = """
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
V1_META = "INSERT INTO meta VALUES ('schema_version', 1), ('next_seq', 0)"
ERROR = '{"type":"ValueError","message":"bad d"}'


def v1_store(path: Path, priority: int = 9) -> Path:
    """A version-1 store: two pending tasks (one with a queue deadline), two kept answers and
    two dead letters, times in Unix seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(f"BEGIN; {V1_SCHEMA}; {V1_META}; COMMIT;")
    with conn:
        conn.executemany(
            "INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                ("a", "f", b"[1]", priority, 12, 3, 1.5, 2, OFFSET + 10.25, OFFSET + 40.25),
                ("b", "g", b'["x"]', 0, 11, 0, None, 0, OFFSET + 11.0, None),
            ],
        )
        conn.executemany(
            "INSERT INTO results VALUES (NULL,?,?,?,?,?,?)",
            [
                ("c", 0, b"42", None, 1, OFFSET + 5.0),
                ("d", 1, b"null", ERROR, 4, OFFSET + 6.0),
            ],
        )
        conn.executemany(
            "INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (7, "e", "f", b"[]", 5, 2, None, 3, 124, None, OFFSET + 7.5),
                (3, "d", "f", b"[2]", 8, 3, 2.5, 4, 1, ERROR, OFFSET + 6.0),
            ],
        )
        conn.execute("UPDATE meta SET value = 13 WHERE key = 'next_seq'")
    conn.close()
    return path


def schema_of(path: Path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(tasks)")]
    finally:
        conn.close()
    return version[0], columns


def test_a_version_1_store_is_migrated_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = v1_store(tmp_path / "broker.db")
    caplog.set_level(logging.INFO, logger="broker.store")
    store = Store.open(path)
    try:
        restored = load(store)
        # The migrated store works like any other.
        store.apply([SaveAnswer(answer("a"), 50.0), SaveTask(TaskSpec("n", "f", b"[]"), 13, 51.0)],
                    OFFSET)  # fmt: skip
        after = load(store)
    finally:
        store.close()
    error = ErrorInfo("ValueError", "bad d")
    assert restored == Restored(
        pending=[
            PendingTask(TaskSpec("b", "g", b'["x"]', 0, 0, None, None), 11, 11.0, 0),
            PendingTask(TaskSpec("a", "f", b"[1]", 9, 3, 30.0, 1.5), 12, 10.25, 2),
        ],
        answers=[
            (TaskCompleted("c", 0, b"42", None, 1), 5.0),
            (TaskCompleted("d", 1, b"null", error, 4), 6.0),
        ],
        dead_letters=[
            DeadLetter(TaskSpec("d", "f", b"[2]", 8, 3, None, 2.5), 4, 1, error, 6.0),
            DeadLetter(TaskSpec("e", "f", b"[]", 5, 2, None, None), 3, 124, None, 7.5),
        ],
        next_seq=13,
    )
    assert [t.spec.task_id for t in after.pending] == ["b", "n"] and after.next_seq == 14
    assert schema_of(path) == (3, ["task_id", "spec", "seq", "attempts", "submitted_at"])
    migrated = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert migrated == [
        f"store {path}: schema version 1 migrated to 3 (2 pending tasks, 2 dead letters)"
    ]
    reopened = Store.open(path)  # once only
    reopened.close()
    assert len([r for r in caplog.records if "migrated" in r.getMessage()]) == 1


def test_a_version_1_task_timeout_beyond_the_limits_becomes_the_brokers_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 1 stores the timeout in force, the broker's default included, and `zbroker
    start --task-timeout` has no upper limit: such a value goes back to being the default."""
    path = v1_store(tmp_path / "broker.db")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE tasks SET timeout = 1e7 WHERE task_id = 'a'")
        conn.execute("UPDATE dead_letters SET timeout = 0.0001 WHERE task_id = 'd'")
    conn.close()
    caplog.set_level(logging.INFO, logger="broker.store")
    store = Store.open(path)
    try:
        restored = load(store)
    finally:
        store.close()
    a = next(t.spec for t in restored.pending if t.spec.task_id == "a")
    assert a == TaskSpec("a", "f", b"[1]", 9, 3, 30.0, None)
    assert restored.dead_letters[0].spec.task_timeout is None
    assert [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()] == [
        f"store {path}: schema version 1 migrated to 3 (2 pending tasks, 2 dead letters; "
        "2 task timeouts beyond the protocol's limits left to the broker's default)"
    ]


def test_a_version_1_row_out_of_the_protocols_limits_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = v1_store(tmp_path / "broker.db", priority=12)
    before = schema_of(path)
    with pytest.raises(StoreError) as caught:
        Store.open(path)
    message = str(caught.value)
    assert message == (
        f"cannot open store {path}: bad row in table tasks (task id 'a'): field priority: "
        "Expected `int` <= 9 (migrating schema version 1); restore a backup or start with "
        "another --store path"
    )
    assert schema_of(path) == before and before[0] == 1


def test_a_version_1_row_refused_after_conversion_leaves_the_file_as_it_was(
    tmp_path: Path,
) -> None:
    """Columns that need no conversion are checked on the migrated rows, inside the same
    transaction."""
    path = v1_store(tmp_path / "broker.db")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE results SET exit_code = 256 WHERE task_id = 'c'")
    conn.close()
    with pytest.raises(StoreError, match=r"table results \(task id 'c'\): field exit_code"):
        Store.open(path)
    assert schema_of(path)[0] == 1


def test_a_damaged_version_1_store_is_refused(tmp_path: Path) -> None:
    path = v1_store(tmp_path / "broker.db")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE dead_letters")
    conn.close()
    with pytest.raises(StoreError, match=r"damaged \(no table dead_letters\); restore a backup"):
        Store.open(path)


def test_a_version_2_store_gains_the_table_of_nodes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 3 adds the node processes a restarted broker waits for; an upgraded store
    starts with none, and keeps what it held."""
    path = tmp_path / "broker.db"
    store = Store.open(path)
    store.apply([SaveTask(TaskSpec("a", "f", b"[1]"), 1, 10.0), SaveAnswer(answer("c"), 5.0)],
                OFFSET)  # fmt: skip
    store.close()
    conn = sqlite3.connect(path)
    with conn:  # back to version 2, as a version-2 broker left it
        conn.execute("DROP TABLE nodes")
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    conn.close()
    caplog.set_level(logging.INFO, logger="broker.store")
    store = Store.open(path)
    try:
        restored = load(store)
        store.apply([SaveNode("n", "h", 7)], OFFSET)
        after = load(store)
    finally:
        store.close()
    assert [p.spec.task_id for p in restored.pending] == ["a"] and restored.nodes == []
    assert [a.task_id for a, _ in restored.answers] == ["c"]
    assert after.nodes == [("n", "h", 7)]
    assert schema_of(path)[0] == 3
    assert [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()] == [
        f"store {path}: schema version 2 migrated to 3 (1 pending tasks, 0 dead letters)"
    ]
