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


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class NodeConfig:
    """How to run a node (the options of `znode`)."""

    function_sets: tuple[str, ...]
    broker_url: str = DEFAULT_BROKER_URL
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes
    threads: int = 1  # slot threads per process: the capacity each process registers
    name: str = field(default_factory=default_name)
    # Used only until the broker's REGISTERED says otherwise.
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    liveness: int = DEFAULT_LIVENESS
    parent_pid: int | None = None  # a supervised node stops when its supervisor is gone
    replaces: Replaces | None = None  # the process this one was started in place of
    report_fd: int | None = None  # where to tell the supervisor why this process exits
    demand_fd: int | None = None  # where to tell an elastic supervisor what it sees
