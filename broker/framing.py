"""What the broker's loop does with frames besides sending them: messages grouped into
batches for one peer, the error for an oversized message, and sampled logging for floods of
bad input. Pure functions: no sockets, no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import groupby
from typing import cast

from broker import protocol as p

log = logging.getLogger("broker.server")

_BATCHED = (p.Run, p.TaskCompleted)


def batched(messages: list[p.Message]) -> Iterator[list[bytes]]:
    """Frames for `messages` in order: consecutive RUNs or TASK_COMPLETEDs as batches."""
    for kind, group in groupby(messages, key=type):
        if kind in _BATCHED:
            tasks = cast(Iterator[p.TaskMessage], group)
            for batch in p.batches(tasks, _payload_size):
                yield p.encode_batch(batch)
        else:
            yield from map(p.encode, group)


def _payload_size(task: p.TaskMessage) -> int:
    return len(task.payload)


def log_sampled(count: int, message: str, *args: object) -> None:
    """Log the first ten of a kind, then every power of ten: a flood of bad input must not
    become a flood of log lines."""
    if count <= 10 or str(count).rstrip("0") == "1":
        log.warning(message + " (%d so far)", *args, count)


def too_large(frames: list[bytes], size: int, limit: int) -> p.ProtocolError:
    task_id = None
    try:
        # The header is small even when the payload is not: name the task if possible.
        if len(frames) >= 5 and len(frames[4]) <= 65536:
            task_id = getattr(p.decode([*frames[2:5], b""]), "task_id", None)
    except p.ProtocolError:
        pass
    text = f"message of {size} bytes exceeds the broker's limit of {limit} bytes"
    return p.ProtocolError(p.ERR_TOO_LARGE, text, task_id)
