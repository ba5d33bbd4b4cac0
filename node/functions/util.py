"""The "util" function set: tiny tasks for testing and measuring the broker and its nodes."""

from __future__ import annotations

import os
import time
from typing import Any, NoReturn

__all__ = ["crash", "echo", "fail", "noop", "pid", "spin"]

MAX_SPIN = 3600.0


def noop() -> None:
    """Do nothing and return null (measures the system's own overhead)."""
    return None


def echo(value: Any) -> Any:
    """Return the argument unchanged."""
    return value


def fail(message: str = "requested failure") -> NoReturn:
    """Raise RuntimeError(message), to test how failures travel back."""
    raise RuntimeError(message)


def pid() -> int:
    """The process id of the slot process running this task."""
    return os.getpid()


def crash(code: int = 1) -> NoReturn:
    """Kill the slot process at once with exit status `code`, to test crash isolation."""
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
        raise ValueError(f"crash() expects an exit status from 0 to 255, got {code!r}")
    os._exit(code)


def spin(seconds: float) -> int:
    """Keep one CPU busy for `seconds` (0 to 3600); return the loop iterations done."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"spin() expects a number of seconds, got {type(seconds).__name__}")
    if not 0 <= seconds <= MAX_SPIN:
        raise ValueError(f"spin() expects 0 to {MAX_SPIN:g} seconds, got {seconds}")
    deadline = time.perf_counter() + seconds
    iterations = 0
    while time.perf_counter() < deadline:
        iterations += 1
    return iterations
