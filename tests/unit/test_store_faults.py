"""Store faults lose nothing silently: a file that is not a valid store is refused at open
with one line that names it and says what to do, and a write that fails says why (real
files in tmp_path)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from broker.core.journal import SaveAnswer, SaveDeadLetter
from broker.protocol import TaskSpec
from broker.store import Store, StoreError, schema
from tests.store_helpers import OFFSET, answer, dead, load, save


def refusal(path: Path) -> str:
    """The one-line message Store.open (and load, which checks every row) refuses `path`
    with."""
    with pytest.raises(StoreError) as caught:
        store = Store.open(path)
        try:
            store.load(OFFSET, 1e12)
        finally:
            store.close()
    message = str(caught.value)
    assert isinstance(caught.value, OSError)
    assert str(path) in message and "\n" not in message, message
    return message


def made_store(path: Path) -> Path:
    """A store holding one row in every table."""
    store = Store.open(path)
    store.apply([save("a", 1), SaveAnswer(answer("b", 1), 2.0), SaveDeadLetter(dead("c"))], OFFSET)
    store.close()
    return path


def run_sql(path: Path, *statements: str, args: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for sql in statements:
            conn.execute(sql, args if "?" in sql else ())
    conn.close()


# ---------------------------------------------------------------------- refused at open


def test_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    message = refusal(tmp_path / "nowhere" / "broker.db")
    assert "directory" in message and "does not exist; create it" in message


def test_an_empty_file_is_refused_not_turned_into_a_store(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    path.touch()
    assert "the file is empty (0 bytes)" in refusal(path)
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    "content", [b"just some text, long enough to be read as a header" * 20, b"short"]
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    assert "it is not an SQLite file, so not a zbroker store; move it away" in refusal(path)
    assert path.read_bytes() == content


def test_another_applications_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    run_sql(path, "CREATE TABLE things (x)", "INSERT INTO things VALUES (1)")
    content = path.read_bytes()
    assert "an SQLite file but not a zbroker store" in refusal(path)
    assert path.read_bytes() == content and not (tmp_path / "other.db-wal").exists()


def test_an_sqlite_file_without_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    run_sql(path, "PRAGMA user_version = 7")  # a valid header, no tables
    assert path.stat().st_size > 0
    assert "an SQLite file without tables, not a zbroker store" in refusal(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "not a regular file" in refusal(tmp_path)


def test_a_store_from_a_newer_broker_is_refused(tmp_path: Path) -> None:
    path = made_store(tmp_path / "broker.db")
    run_sql(path, "UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    message = refusal(path)
    assert "schema version 4 is newer than this zbroker's (3); upgrade zbroker" in message


@pytest.mark.parametrize("version", ["'two'", "0", "-1", "NULL"])
def test_an_unknown_schema_version_is_refused(tmp_path: Path, version: str) -> None:
    path = made_store(tmp_path / "broker.db")
    run_sql(path, "CREATE TABLE meta2 (key TEXT, value)", "INSERT INTO meta2 SELECT * FROM meta",
            "DROP TABLE meta", "ALTER TABLE meta2 RENAME TO meta",  # NOT NULL gone
            f"UPDATE meta SET value = {version} WHERE key = 'schema_version'")  # fmt: skip
    assert "is unknown; restore a backup" in refusal(path)


def test_a_store_without_a_table_is_refused(tmp_path: Path) -> None:
    path = made_store(tmp_path / "broker.db")
    run_sql(path, "DROP TABLE results", "DROP TABLE tasks")
    assert "it is damaged (no table results, tasks); restore a backup" in refusal(path)


def test_a_table_with_other_columns_is_refused(tmp_path: Path) -> None:
    path = made_store(tmp_path / "broker.db")
    run_sql(path, "ALTER TABLE dead_letters ADD COLUMN note TEXT")
    message = refusal(path)
    assert "table dead_letters has columns pos, task_id, spec," in message
    assert "failed_at, note; expected pos, task_id" in message


def test_a_store_in_use_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "broker.db")
    try:
        assert "in use by another process" in refusal(store.path)
        store.apply([save("a")], OFFSET)  # the first one is unaffected
        assert len(load(store).pending) == 1
    finally:
        store.close()


# ------------------------------------------------------------------------ bad rows


def spec_blob(**fields: object) -> bytes:
    """A spec encoded as the store encodes it, with any values (the constructor checks
    nothing; the store's decoder checks everything)."""
    values = {"task_id": "a", "function": "f", "args": b"[]"} | fields
    return msgspec.msgpack.encode(TaskSpec(**values))  # type: ignore[arg-type]


BAD_ROWS: list[tuple[str, tuple[object, ...], str]] = [
    ("UPDATE tasks SET spec = ?", (spec_blob(priority=99),),
     "table tasks (task id 'a'): field spec.priority: Expected `int` <= 9"),
    ("UPDATE tasks SET spec = ?", (spec_blob(function=""),),
     "table tasks (task id 'a'): field spec.function: Expected `str` of length >= 1"),
    ("UPDATE tasks SET spec = ?", (spec_blob(retries=101),),
     "field spec.retries: Expected `int` <= 100"),
    ("UPDATE tasks SET spec = ?", (spec_blob(queue_timeout=0.0),),
     "field spec.queue_timeout: Expected `float` >= 0.001"),
    ("UPDATE tasks SET spec = ?", (spec_blob(task_id="z"),),
     "field spec.task_id: 'z' is not the row's task id"),
    ("UPDATE tasks SET spec = ?", (b"\xc1 not msgpack",),
     "table tasks (task id 'a'): field spec: MessagePack data is malformed"),
    ("UPDATE tasks SET spec = 'text'", (), "field spec: Expected `bytes`, got `str`"),
    ("UPDATE tasks SET attempts = -1", (), "table tasks (task id 'a'): field attempts"),
    ("UPDATE tasks SET seq = 1.5", (), "field seq: Expected `int`, got `float`"),
    ("UPDATE tasks SET submitted_at = 'yesterday'", (),
     "field submitted_at: Expected `float`, got `str`"),
    ("UPDATE tasks SET task_id = ''", (), "table tasks (task id ''): field task_id"),
    ("UPDATE results SET exit_code = 300", (),
     "table results (task id 'b'): field exit_code: Expected `int` <= 255"),
    ("UPDATE results SET attempts = 1000001", (), "field attempts: Expected `int` <= 1000000"),
    ("UPDATE results SET result = 'text'", (), "field result: Expected `bytes`, got `str`"),
    ("UPDATE results SET error = 'oops'", (),
     "table results (task id 'b'): field error: JSON is malformed"),
    ("""UPDATE results SET error = '{"type": 1, "message": "m"}'""", (),
     "field error: Expected `str`, got `int` - at `$.type`"),
    ("""UPDATE results SET error = '{"type": "E"}'""", (),
     "field error: Object missing required field `message`"),
    ("UPDATE dead_letters SET exit_code = 0", (),
     "table dead_letters (task id 'c'): field exit_code: Expected `int` >= 1"),
    ("UPDATE dead_letters SET spec = ?", (spec_blob(task_id="c", priority=-1),),
     "table dead_letters (task id 'c'): field spec.priority: Expected `int` >= 0"),
    ("UPDATE dead_letters SET error = '[]'", (), "field error: Expected `object`, got `array`"),
    ("DELETE FROM meta WHERE key = 'next_seq'", (),
     "table meta (key 'next_seq'): field value: no such row"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "args", "expected"), BAD_ROWS)
def test_a_row_that_does_not_fit_the_protocols_limits_is_refused(
    tmp_path: Path, sql: str, args: tuple[object, ...], expected: str
) -> None:
    path = made_store(tmp_path / "broker.db")
    run_sql(path, sql, args=args)
    message = refusal(path)
    assert "bad row in " in message and expected in message, message
    assert message.endswith("restore a backup or start with another --store path")


# ------------------------------------------------------------------- failures while running


def test_a_full_disk_says_so_and_records_nothing_of_the_batch(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, on a real file: `PRAGMA max_page_count` caps the database
    at its present size, and SQLite reports a write past it exactly as a full disk. It is a
    setting of the connection, so the test sets it on the store's own connection."""
    store = Store.open(made_store(tmp_path / "broker.db"))
    try:
        before = load(store)
        conn = store._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [save(f"t{i}", 10 + i, args=b"[%d]" % i * 500) for i in range(100)]
        with pytest.raises(StoreError) as caught:
            store.apply([*big, SaveAnswer(answer("a"), 3.0)], OFFSET)
        message = str(caught.value)
        assert message.startswith(f"disk full writing {store.path}: database or disk is full")
        assert message.endswith("free space and restart the broker")
        assert "cannot rollback" not in message and "\n" not in message
        assert load(store) == before  # nothing of the batch
        conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
        store.apply(big, OFFSET)
        assert len(load(store).pending) == 101
    finally:
        store.close()


def test_a_new_store_that_could_not_be_set_up_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new store whose creation fails (here: SQLite's own disk full, as the test above
    makes it) leaves no empty file behind, which the next start would refuse."""
    create = schema.create

    def create_on_a_full_disk(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 1")
        create(conn)

    monkeypatch.setattr(schema, "create", create_on_a_full_disk)
    path = tmp_path / "broker.db"
    assert "disk full (database or disk is full); free space" in refusal(path)
    assert not path.exists()
    monkeypatch.undo()
    Store.open(path).close()  # nothing in the way of the next try
