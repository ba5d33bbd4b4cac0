"""The e2e tier: the real commands as separate processes, started through the project's one
cluster launcher (client.cluster.LocalCluster), with short heartbeats so that a dead node is
found fast. Every process is reaped after each test, and all their logs are printed when it
fails."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.cluster import LocalCluster, Process, command

INTERVAL = 0.2  # seconds between heartbeats
LIVENESS = 3
RETRY_BACKOFF = 0.05  # short waits between attempts, for the same reason


class Cluster(LocalCluster):
    """LocalCluster with the tests' settings and a few conveniences."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, log_level="INFO")
        self.tmp = tmp

    def start_broker(
        self, *args: str, bind: str = "tcp://127.0.0.1:0", store: str | Path | None = None
    ) -> Process:
        fast = ["--heartbeat-interval", str(INTERVAL), "--liveness", str(LIVENESS)]
        fast += ["--retry-backoff", str(RETRY_BACKOFF)]
        return super().start_broker(*fast, *args, bind=bind, store=store)

    def wait_nodes(self, *names: str, timeout: float = 15) -> None:
        """Until exactly these node processes are registered."""
        self.wait_for(
            lambda: self.node_names() == sorted(names),
            f"nodes {sorted(names)} registered",
            timeout,
        )

    def zbroker(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`zbroker COMMAND ...` against this cluster's broker (`--broker` added last)."""
        argv_ = [*command("zbroker"), *argv, "--broker", self.url]
        return subprocess.run(argv_, capture_output=True, text=True, timeout=timeout)

    def zsubmit(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv_ = [*command("zsubmit"), "--broker", self.url, *argv]
        return subprocess.run(argv_, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def reaped_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A Cluster whose processes are all reaped after the test, their logs printed when it
    failed (for fixtures: `with reaped_cluster(request, tmp_path) as made: ... yield made`)."""
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()
        report: Any = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(made.logs())


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with reaped_cluster(request, tmp_path) as made:
        yield made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
