"""The dead-letter log: one JSON object per line, the arguments spliced in byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.deadletters import DeadLetter
from broker.dlq_log import DeadLetterLog, line
from broker.protocol import ErrorInfo
from broker.store import StoreError

OFFSET = 1_795_363_200.0  # 2026-11-22T16:00:00Z at monotonic 0


def dead(task_id: str, payload: bytes = b'[1,"two",{"x":3}]', at: float = 0.5) -> DeadLetter:
    error = ErrorInfo("ZeroDivisionError", "division by zero")
    return DeadLetter(task_id, "divide", payload, 5, 2, 1.5, 3, 1, error, at)


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]


def test_a_line_has_every_field_and_the_arguments_as_submitted() -> None:
    text = line(dead("t1"), OFFSET)
    assert text.endswith(b',"args":[1,"two",{"x":3}]}\n') and text.count(b"\n") == 1
    assert json.loads(text) == {
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
    entry = DeadLetter("t", "f", b"[]", 0, 0, None, 1, 125, None, 2.0)
    assert json.loads(line(entry, OFFSET))["error"] is None


def test_integers_beyond_64_bits_are_kept_exactly() -> None:
    big = b"[333333383333335000000, -18446744073709551617]"
    assert line(dead("t", big), OFFSET).endswith(b',"args":' + big + b"}\n")


def test_line_breaks_between_tokens_become_spaces() -> None:
    pretty = b'[\r\n  1,\n  "a b"\n]'
    loaded = json.loads(line(dead("t", pretty), OFFSET))
    assert loaded["args"] == [1, "a b"] and "args_hex" not in loaded


@pytest.mark.parametrize(
    "payload",
    [b"", b"[1,", b"not json", b'["\xff"]', b"[NaN]", b'["a\nb"]', b"[1] [2]", b"[1]\n{"],
)
def test_arguments_that_are_not_json_text_go_in_hex(payload: bytes) -> None:
    text = line(dead("t", payload), OFFSET)
    assert text.count(b"\n") == 1
    loaded = json.loads(text)
    assert "args" not in loaded
    assert bytes.fromhex(loaded["args_hex"]) == payload


def test_append_writes_one_line_per_entry_in_order_and_keeps_earlier_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dlq.jsonl"
    log = DeadLetterLog(path)
    log.append([dead("a"), dead("b", b"\x00garbage")], OFFSET)
    log.append([], OFFSET)
    assert [e["task_id"] for e in read(path)] == ["a", "b"]  # flushed: readable right away
    log.close()
    again = DeadLetterLog(path)
    again.append([dead("c")], OFFSET)
    again.close()
    entries = read(path)
    assert [e["task_id"] for e in entries] == ["a", "b", "c"]
    assert entries[1]["args_hex"] == "00" + b"garbage".hex()


def test_a_cut_short_last_line_does_not_swallow_the_next_entry(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    path.write_bytes(line(dead("a"), OFFSET) + b'{"task_id": "cut')
    log = DeadLetterLog(path)
    log.append([dead("b")], OFFSET)
    log.close()
    lines = path.read_bytes().split(b"\n")
    assert json.loads(lines[-2])["task_id"] == "b" and lines[-1] == b""


def test_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"dead-letter log .*nowhere.*directory exists"):
        DeadLetterLog(tmp_path / "nowhere" / "dlq.jsonl")
