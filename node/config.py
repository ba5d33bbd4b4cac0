"""NodeConfig: how to run one node process (the options of `znode`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from broker.protocol import (
    DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS,
    Replaces,
)

# Tasks a node process asks to hold beyond its slots (protocol.md 5.5): enough that a slot
# that frees starts its next short task while the broker sends more. The broker lets it
# hold about 10 ms of work of these (one task, when they run long), and takes held tasks
# back for a slot idle elsewhere.
DEFAULT_PREFETCH = 64


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class NodeConfig:
    """How to run a node (the options of `znode`)."""

    function_sets: tuple[str, ...]
    broker_url: str = DEFAULT_BROKER_URL
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes
    threads: int = 1  # slot threads per process: the capacity each process registers
    prefetch: int = DEFAULT_PREFETCH  # tasks each process holds beyond its slots
    name: str = field(default_factory=default_name)
    # Used only until the broker's REGISTERED says otherwise.
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    liveness: int = DEFAULT_LIVENESS
    parent_pid: int | None = None  # a supervised node stops when its supervisor is gone
    replaces: Replaces | None = None  # the process this one was started in place of
    # RESULTs that process handed over (node/supervision.py): claimed and sent once registered.
    handover: tuple[list[bytes], ...] = ()
    report_fd: int | None = None  # where to tell the supervisor why this process exits
    demand_fd: int | None = None  # where to tell an elastic supervisor what it sees
    # CURVE (znode --curve KEY --broker-key PUB): the node's secret key file and the
    # broker's public key file; the process loads them when it connects.
    curve: str | None = None
    broker_key: str | None = None
