"""A function set for the tests of clients across a broker restart
(tests/e2e/test_client_restarts.py)."""

from __future__ import annotations

import time


def pause(value: int, seconds: float) -> int:
    """Sleep `seconds`, then return `value`: a short task whose result tells which it was."""
    time.sleep(seconds)
    return value
