"""DeadLetterLog: every dead letter appended to a JSON-lines file, one object per line.

The log is for people and their tools (`jq`, `grep`); the store is what the broker reloads.
A line holds task_id, function, priority, retries, attempts, exit_code, error, failed_at (Unix
seconds), failed_at_iso (UTC) and the arguments: "args" is the payload frame spliced in as it
was submitted. A payload that is not JSON text (a client sent something else; its task then
ended with exit 2) would break the line, so it goes in "args_hex" instead. Telling the two
apart takes a parse, which only happens here, for tasks that failed for good.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from broker.deadletters import DeadLetter
from broker.store import StoreError


class DeadLetterLog:
    """Appends to `path` (created if missing); each `append` is flushed to the OS at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("ab")
            if self._file.tell() > 0 and not _ends_with_newline(self.path):
                # The last line was cut short (disk full?): ours start on a line of their own.
                self._file.write(b"\n")
        except OSError as exc:
            raise StoreError(
                f"cannot open the dead-letter log {self.path}: {exc.strerror}; check that its "
                "directory exists and is writable, or pick another log path"
            ) from exc

    def append(self, entries: Iterable[DeadLetter], wall_offset: float) -> None:
        """Write one line per entry, in order, and flush them (one write for the batch)."""
        data = b"".join(line(entry, wall_offset) for entry in entries)
        if not data:
            return
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            raise StoreError(
                f"cannot write to the dead-letter log {self.path}: {exc.strerror}; check the "
                "disk (space, permissions)"
            ) from exc

    def close(self) -> None:
        self._file.close()


def line(entry: DeadLetter, wall_offset: float) -> bytes:
    """The JSON line (with its newline) for `entry`; `failed_at` is monotonic + wall_offset."""
    failed_at = round(entry.failed_at + wall_offset, 3)
    when = datetime.fromtimestamp(failed_at, UTC).isoformat(timespec="milliseconds")
    fields = {
        "task_id": entry.task_id,
        "function": entry.function,
        "priority": entry.priority,
        "retries": entry.retries,
        "attempts": entry.attempts,
        "exit_code": entry.exit_code,
        "error": None if entry.error is None else entry.error.to_json(),
        "failed_at": failed_at,
        "failed_at_iso": when.replace("+00:00", "Z"),
    }
    args = _json_text(entry.payload)
    if args is None:
        fields["args_hex"] = entry.payload.hex()
        return orjson.dumps(fields) + b"\n"
    return orjson.dumps(fields)[:-1] + b',"args":' + args + b"}\n"


def _json_text(payload: bytes) -> bytes | None:
    """`payload` if it is one JSON value in UTF-8 (line breaks, which can then only be
    whitespace between tokens, become spaces), else None."""
    try:
        orjson.loads(payload)  # validates only: the value is dropped, the bytes are written
    except orjson.JSONDecodeError:
        return None
    if b"\n" in payload or b"\r" in payload:
        return payload.replace(b"\n", b" ").replace(b"\r", b" ")
    return payload


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, 2)
        return file.read(1) == b"\n"
