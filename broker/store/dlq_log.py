"""DeadLetterLog: every dead letter appended to a JSON-lines file, one object per line.

The log is for people and their tools (`jq`, `grep`); the store is what the broker reloads.
A line holds task_id, function, priority, retries, attempts, exit_code, error, failed_at (Unix
seconds), failed_at_iso (UTC) and the arguments, all taken from the entry's spec: "args" is
the arguments frame spliced in as it was submitted. Arguments that are not JSON text (a
client sent something else; its task then ended with exit 2) would break the line, so they go
in "args_hex" instead. Telling the two apart takes a parse, which only happens here, for
tasks that failed for good.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from broker.core.deadletters import DeadLetter
from broker.store.errors import StoreError, log_write_failed


class DeadLetterLog:
    """Appends to `path` (created if missing). Unbuffered: each `append` is in the OS (one
    write for its batch) when it returns, and a write that fails leaves nothing behind in
    this process to be written again later. "retries" is `default_retries` for a spec
    without its own."""

    def __init__(self, path: str | Path, default_retries: int) -> None:
        self.path = Path(path)
        self.default_retries = default_retries
        try:
            self._file = self.path.open("ab", buffering=0)
        except OSError as exc:
            raise StoreError(
                f"cannot open dead-letter log {self.path}: {exc.strerror}; check that its "
                "directory exists and is writable, or pick another log path"
            ) from exc
        try:
            if self._file.tell() > 0 and not _ends_with_newline(self.path):
                # The last line was cut short (disk full?): ours start on a line of their own.
                self._write(b"\n")
        except BaseException:
            self._file.close()
            raise

    def append(self, entries: Iterable[DeadLetter], wall_offset: float) -> None:
        """Write one line per entry, in order. Raises StoreError if the write fails."""
        data = b"".join(line(entry, wall_offset, self.default_retries) for entry in entries)
        if data:
            self._write(data)

    def close(self) -> None:
        self._file.close()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # a regular file takes it all at once unless the disk is full
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[written:]
        except OSError as exc:
            raise log_write_failed(self.path, exc) from exc


def line(entry: DeadLetter, wall_offset: float, default_retries: int) -> bytes:
    """The JSON line (with its newline) for `entry`; `failed_at` is monotonic + wall_offset."""
    fields = entry.view(wall_offset, default_retries)  # as DLQ_REPLY shows it
    when = datetime.fromtimestamp(fields["failed_at"], UTC).isoformat(timespec="milliseconds")
    fields["failed_at_iso"] = when.replace("+00:00", "Z")
    args = _json_text(entry.spec.args)
    if args is None:
        fields["args_hex"] = entry.spec.args.hex()
        return orjson.dumps(fields) + b"\n"
    return orjson.dumps(fields)[:-1] + b',"args":' + args + b"}\n"


def _json_text(args: bytes) -> bytes | None:
    """`args` if it is one JSON value in UTF-8 (line breaks, which can then only be
    whitespace between tokens, become spaces), else None."""
    try:
        orjson.loads(args)  # validates only: the value is dropped, the bytes are written
    except orjson.JSONDecodeError:
        return None
    if b"\n" in args or b"\r" in args:
        return args.replace(b"\n", b" ").replace(b"\r", b" ")
    return args


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, 2)
        return file.read(1) == b"\n"
