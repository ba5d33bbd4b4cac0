"""The node: a process that registers function sets with a broker and runs their tasks.

A function set imports its declarations from here:

    from node import retryable, splittable

and a function running as a task reaches the broker with `get_client()` (node.context).
"""

from __future__ import annotations

from node.context import get_client as get_client
from node.registry import retryable as retryable
from node.splitting import ranges as ranges, splittable as splittable

__all__ = ["get_client", "ranges", "retryable", "splittable"]
