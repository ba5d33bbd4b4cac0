"""The dead-letter log: one JSON object per line, the fields taken from the entry's spec, the
arguments spliced in byte for byte; a failed write says why."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from broker.core.deadletters import DeadLetter
from broker.protocol import ErrorInfo, TaskSpec
from broker.store import DeadLetterLog, StoreError
from broker.store.dlq_log import line
from broker.store.errors import log_write_failed

OFFSET = 1_795_363_200.0  # 2026-11-22T16:00:00Z at monotonic 0
DEFAULT_RETRIES = 3


def dead(
    task_id: str, args: bytes = b'[1,"two",{"x":3}]', at: float = 0.5, retries: int | None = 2
) -> DeadLetter:
    error = ErrorInfo("ZeroDivisionError", "division by zero")
    spec = TaskSpec(task_id, "divide", args, 5, retries, None, 1.5)
    return DeadLetter(spec, 3, 1, error, at)


def text(entry: DeadLetter) -> bytes:
    return line(entry, OFFSET, DEFAULT_RETRIES)


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def test_a_line_has_every_field_and_the_arguments_as_submitted() -> None:
    written = text(dead("t1"))
    assert written.endswith(b',"args":[1,"two",{"x":3}]}\n') and written.count(b"\n") == 1
    assert json.loads(written) == {
        "task_id": "t1",
        "function": "divide",
        "priority": 5,
        "retries": 2,
        "attempts": 3,
        "exit_code": 1,
        "error": {"type": "ZeroDivisionError", "message": "division by zero"},
        "failed_at": 1795363200.5,
        "failed_at_iso": "2026-11-22T16:00:00.500Z",
        "args": [1, "two", {"x": 3}],
    }


def test_no_error_is_null() -> None:
    entry = DeadLetter(TaskSpec("t", "f", b"[]", 0), 0, 125, None, 2.0)
    assert json.loads(text(entry))["error"] is None


def test_a_spec_without_retries_shows_the_brokers_default() -> None:
    assert json.loads(line(dead("t", retries=None), OFFSET, 7))["retries"] == 7
    assert json.loads(line(dead("t", retries=0), OFFSET, 7))["retries"] == 0


def test_integers_beyond_64_bits_are_kept_exactly() -> None:
    big = b"[333333383333335000000, -18446744073709551617]"
    assert text(dead("t", big)).endswith(b',"args":' + big + b"}\n")


def test_line_breaks_between_tokens_become_spaces() -> None:
    pretty = b'[\r\n  1,\n  "a b"\n]'
    loaded = json.loads(text(dead("t", pretty)))
    assert loaded["args"] == [1, "a b"] and "args_hex" not in loaded


@pytest.mark.parametrize(
    "args",
    [b"", b"[1,", b"not json", b'["\xff"]', b"[NaN]", b'["a\nb"]', b"[1] [2]", b"[1]\n{"],
)
def test_arguments_that_are_not_json_text_go_in_hex(args: bytes) -> None:
    written = text(dead("t", args))
    assert written.count(b"\n") == 1
    loaded = json.loads(written)
    assert "args" not in loaded
    assert bytes.fromhex(loaded["args_hex"]) == args


def test_append_writes_one_line_per_entry_in_order_and_keeps_earlier_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dlq.jsonl"
    log = DeadLetterLog(path, DEFAULT_RETRIES)
    log.append([dead("a"), dead("b", b"\x00garbage")], OFFSET)
    log.append([], OFFSET)
    assert [e["task_id"] for e in read(path)] == ["a", "b"]  # flushed: readable right away
    log.close()
    again = DeadLetterLog(path, DEFAULT_RETRIES)
    again.append([dead("c")], OFFSET)
    again.close()
    entries = read(path)
    assert [e["task_id"] for e in entries] == ["a", "b", "c"]
    assert entries[1]["args_hex"] == "00" + b"garbage".hex()


def test_a_cut_short_last_line_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(text(dead("a")) + b'{"task_id": "cut')
    log = DeadLetterLog(path, DEFAULT_RETRIES)
    log.append([dead("b")], OFFSET)
    log.close()
    lines = path.read_bytes().split(b"\n")
    assert json.loads(lines[-2])["task_id"] == "b" and lines[-1] == b""


def test_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"dead-letter log .*nowhere.*directory exists"):
        DeadLetterLog(tmp_path / "nowhere" / "dlq.jsonl", DEFAULT_RETRIES)


def test_a_full_disk_says_so() -> None:
    """/dev/full: every write fails with ENOSPC, as on a full disk, on any Linux."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    log = DeadLetterLog("/dev/full", DEFAULT_RETRIES)
    try:
        with pytest.raises(StoreError) as caught:
            log.append([dead("a")], OFFSET)
    finally:
        log.close()  # nothing is left buffered to fail again here
    assert str(caught.value) == (
        "disk full writing /dev/full: No space left on device; free space and restart the broker"
    )


def test_a_path_that_cannot_be_appended_to_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    path.mkdir()
    with pytest.raises(StoreError, match=r"cannot open dead-letter log .*: Is a directory"):
        DeadLetterLog(path, DEFAULT_RETRIES)


def test_other_write_failures_name_the_log_and_what_to_check() -> None:
    error = log_write_failed(Path("/var/log/dlq.jsonl"), OSError(errno.EIO, "Input/output error"))
    assert isinstance(error, OSError) and str(error) == (
        "cannot write dead-letter log /var/log/dlq.jsonl: Input/output error; check the disk "
        "(space, permissions) and restart the broker"
    )
