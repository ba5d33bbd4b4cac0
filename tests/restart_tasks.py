"""A function set for the tests of broker restarts: tasks that note each run they start in a
file, so that a test can count how often each ran."""

from __future__ import annotations

import os
import time


def noted_sleep(path: str, key: str, seconds: float) -> str:
    """Append `key` to the file at `path` (one line per run, atomic), then sleep."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return key
