"""A broker and nodes on loopback, started as a user starts them, for the tools here."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from broker.control import BrokerUnreachable, status

BIN = Path(sys.executable).parent


def wait_for(predicate: Any, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        for proc in procs:
            if proc.poll() is not None:
                sys.exit(f"error: {proc.args} exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting for {what}")
        time.sleep(0.05)


def registered(url: str, count: int) -> bool:
    try:
        return len(status(url, timeout=0.5)["nodes"]) >= count
    except BrokerUnreachable:
        return False


class Cluster:
    """`zbroker start` and `nodes` x `znode --functions FUNCTIONS` on loopback, as a user runs
    them; the context manager yields the broker URL and stops everything with SIGTERM."""

    def __init__(
        self,
        workdir: Path,
        nodes: int,
        node_args: list[str] | None = None,
        broker_args: list[str] | None = None,
        functions: str = "util",
        log_level: str = "WARNING",
        name_prefix: str = "",
    ) -> None:
        self.workdir, self.nodes = workdir, nodes
        self.node_args, self.broker_args = node_args or [], broker_args or []
        self.functions, self.log_level, self.name_prefix = functions, log_level, name_prefix
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, argv: list[str], log: str) -> None:
        command = [str(BIN / argv[0]), *argv[1:]]
        with (self.workdir / log).open("wb") as out:
            self.procs.append(subprocess.Popen(command, stdout=out, stderr=out))

    def __enter__(self) -> str:
        ready = self.workdir / "endpoint"
        broker = ["zbroker", "start", "--bind", "tcp://127.0.0.1:0", "--ready-file", str(ready)]
        if "--store" not in self.broker_args:  # the default store, in this run's directory
            broker += ["--store", str(self.workdir / "broker.sqlite3")]
        self._start([*broker, "--log-level", self.log_level, *self.broker_args], "broker.log")
        wait_for(lambda: ready.exists() and ready.read_text().strip(), "the broker", self.procs)
        url = ready.read_text().strip()
        for i in range(self.nodes):
            node = ["znode", "--broker", url, "--functions", self.functions]
            if self.name_prefix:
                node += ["--name", f"{self.name_prefix}-{i + 1}"]
            self._start([*node, "--log-level", self.log_level, *self.node_args], f"node{i}.log")
        expected = self.nodes * _processes(self.node_args)
        wait_for(lambda: registered(url, expected), f"{expected} node processes", self.procs)
        return url

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=15)


def _processes(node_args: list[str]) -> int:
    if "--concurrency" in node_args:
        return int(node_args[node_args.index("--concurrency") + 1])
    return 1
