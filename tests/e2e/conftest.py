from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.control import BrokerUnreachable, status
from tests.support import BIN, Proc, Spawner, read_ready_file, wait_until

INTERVAL = 0.2  # short heartbeats so dead nodes are found fast
LIVENESS = 3
RETRY_BACKOFF = 0.05  # short waits between attempts, for the same reason


@dataclass
class Cluster:
    """A broker and nodes started through their CLIs, as a user would."""

    spawner: Spawner
    tmp: Path
    url: str = ""
    broker: Proc | None = None
    nodes: list[Proc] = field(default_factory=list)

    def start_broker(
        self, *extra: str, bind: str = "tcp://127.0.0.1:0", store: str | None = None
    ) -> Proc:
        """`zbroker start`; its store is one file per test, so a restart finds its tasks."""
        ready = self.tmp / f"broker-{len(self.spawner.procs)}.endpoint"
        self.broker = self.spawner.start(
            "zbroker",
            "zbroker",
            "start",
            "--bind",
            bind,
            "--ready-file",
            str(ready),
            "--heartbeat-interval",
            str(INTERVAL),
            "--liveness",
            str(LIVENESS),
            "--retry-backoff",
            str(RETRY_BACKOFF),
            "--store",
            store or str(self.store),
            *extra,
        )
        self.url = read_ready_file(ready, 15, self.broker)
        return self.broker

    @property
    def store(self) -> Path:
        return self.tmp / "broker.sqlite3"

    def start_node(self, *extra: str, functions: str = "math", concurrency: int = 1) -> Proc:
        name = f"node{len(self.nodes)}"
        node = self.spawner.start(
            name,
            "znode",
            "--broker",
            self.url,
            "--functions",
            functions,
            "--concurrency",
            str(concurrency),
            "--name",
            name,
            *extra,
        )
        self.nodes.append(node)
        return node

    def status(self) -> dict[str, Any]:
        return status(self.url, timeout=2.0)

    def node_names(self) -> list[str]:
        try:
            return sorted(n["name"] for n in self.status()["nodes"])
        except BrokerUnreachable:
            return []

    def wait_nodes(self, *names: str, timeout: float = 15) -> None:
        alive = [p for p in [self.broker, *self.nodes] if p is not None and p.alive()]
        wait_until(
            lambda: self.node_names() == sorted(names),
            timeout,
            what=f"nodes {sorted(names)} registered",
            alive=alive,
        )

    def zbroker(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`zbroker COMMAND ...` against this cluster's broker (`--broker` added last)."""
        command = [str(BIN / "zbroker"), *argv, "--broker", self.url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def zsubmit(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "zsubmit"), "--broker", self.url, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cluster(spawner: Spawner, tmp_path: Path) -> Iterator[Cluster]:
    yield Cluster(spawner, tmp_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
