"""The "util" function set: tiny tasks for testing and measuring the broker and its nodes."""

from __future__ import annotations

import ctypes
import os
import resource
import time
from typing import Any, NoReturn

__all__ = ["burn", "crash", "echo", "fail", "noop", "pid", "segfault", "spin"]

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
    """The process id of the node process running this task."""
    return os.getpid()


def crash(code: int = 1) -> NoReturn:
    """Kill the node process running it at once with exit status `code` (its supervisor
    starts a new one), to test what survives a crash."""
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
        raise ValueError(f"crash() expects an exit status from 0 to 255, got {code!r}")
    os._exit(code)


def segfault() -> NoReturn:
    """Crash the node process running it with a real SIGSEGV (a read of address 0), as a
    broken C extension would; its supervisor starts a new one."""
    # No core file: this crash is on purpose, and writing one would only slow the restart.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)
    raise AssertionError("reading address 0 did not crash this process")  # unreachable


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


MAX_BURN = 10**10


def burn(iterations: int) -> int:
    """A fixed amount of CPU-bound Python work (measures speedups); returns a checksum."""
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"burn() expects an integer, got {type(iterations).__name__}")
    if not 0 <= iterations <= MAX_BURN:
        raise ValueError(f"burn() expects 0 to {MAX_BURN} iterations, got {iterations}")
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total
