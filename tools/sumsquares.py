"""A function set for `tools/bench.py split`: the sum of squares computed by counting, as a
CPU-bound job that splits (node.splitting). The math set's `sum_squares` uses the closed form
and finishes at once whatever the range; this one does the work, so that a split job can be
compared with `multiprocessing.Pool` on the same machine."""

from __future__ import annotations

from node import ranges, splittable

__all__ = ["counted_sum_squares"]


@splittable(split=ranges, combine=sum)
def counted_sum_squares(start: int, end: int) -> int:
    """The sum of k**2 for k from start to end inclusive, one square at a time."""
    return sum(k * k for k in range(start, end + 1))
