"""A function set for the tests that declares split and combine (node.splitting), as a
user's own module would."""

from __future__ import annotations

import time

from node import ranges, splittable


def _ranges_with_delay(parts: int, start: int, end: int, delay: float) -> list[list[float]]:
    return [[a, b, delay] for a, b in ranges(parts, start, end)]


@splittable(split=_ranges_with_delay, combine=sum)
def slow_sum_squares(start: int, end: int, delay: float) -> int:
    """The sum of k**2 for k in start..end, after sleeping `delay` seconds: a part that
    takes long enough to be caught running."""
    time.sleep(delay)
    return sum(k * k for k in range(start, end + 1))


@splittable(split=ranges, combine=sum)
def unlucky_sum(start: int, end: int) -> int:
    """The sum of start..end; raises LookupError for a range that holds 13."""
    if start <= 13 <= end:
        raise LookupError("13 is unlucky")
    return sum(range(start, end + 1))
