"""The node: a process that registers function sets with a broker and runs their tasks.

A function set imports its declarations from here:

    from node import retryable, splittable
"""

from __future__ import annotations

from node.registry import retryable as retryable
from node.splitting import ranges as ranges, splittable as splittable

__all__ = ["ranges", "retryable", "splittable"]
