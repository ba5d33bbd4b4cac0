"""LocalCluster: a broker and nodes on this machine, started as a user starts them.

`zbroker start` and `znode` run as child processes of this one, on 127.0.0.1 with a port the
OS picks, each with its log in a work directory. The end-to-end tests, the tools (bench,
chaos, demo) and anyone trying the system from a notebook use it the same way:

    with LocalCluster(nodes=2, functions=["math"]) as cluster, Client(cluster.url) as c:
        c.execute("multiply", 5, 10)

Every process it starts is stopped when the cluster closes (SIGTERM, then SIGKILL), even when
the code using it fails; `logs()` gathers what they wrote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from broker.security import PeerKeys
from client.control import ControlClient
from client.errors import BrokerTimeout, BrokerUnreachable, ClientError
from client.link import ReqLink

T = TypeVar("T")
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0  # seconds a broker or node may take to come up


class ClusterError(ClientError):
    """A process of the cluster did not start or died; the message has its log's end."""


@dataclass
class Process:
    """A child process of the cluster, with its output (stdout and stderr) in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not go within `timeout`; always reaped."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout=timeout)


def command(name: str) -> list[str]:
    """How to run console script `name` of this installation (`zbroker`, `znode`)."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"zbroker": "broker.cli", "znode": "node.cli", "zsubmit": "client.cli"}[name]
    return [sys.executable, "-m", module]


class LocalCluster:
    """A broker (and, with `nodes`, that many `znode` processes) in `workdir` (a temporary
    directory removed on close when not given). `broker_args` and `node_args` are passed on
    as they are; the broker's store is `workdir/broker.sqlite3` unless `broker_args` says
    `--store`. Entering the context starts the broker and the nodes and waits until every
    node process has registered."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        nodes: int = 0,
        functions: Sequence[str] = ("math",),
        broker_args: Sequence[str] = (),
        node_args: Sequence[str] = (),
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> None:
        self._tempdir = None if workdir is not None else tempfile.TemporaryDirectory()
        self.workdir = Path(workdir if workdir is not None else self._own_dir())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._initial = (nodes, list(functions), list(broker_args), list(node_args))
        self.log_level = log_level
        self.env = env
        self.url = ""
        self.listening_since = 0.0  # time.time() when the current broker began to listen
        self.broker: Process | None = None
        self.nodes: list[Process] = []
        self.processes: list[Process] = []
        # CURVE keys the cluster asks its broker's status with (a broker with --curve).
        self.keys: PeerKeys | None = None

    def _own_dir(self) -> str:
        assert self._tempdir is not None
        return self._tempdir.name

    @property
    def store(self) -> Path:
        """The broker's store, unless its arguments name another."""
        return self.workdir / "broker.sqlite3"

    # ------------------------------------------------------------------ starting

    def __enter__(self) -> LocalCluster:
        try:
            nodes, functions, broker_args, node_args = self._initial
            self.start_broker(*broker_args)
            for _ in range(nodes):
                self.start_node(*node_args, functions=functions)
            self.wait_for_nodes(nodes * _processes(node_args))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start_broker(
        self, *args: str, bind: str = "tcp://127.0.0.1:0", store: str | Path | None = None
    ) -> Process:
        """`zbroker start` on `bind`; returns once it listens (`url` is its endpoint,
        `listening_since` when it began to). A broker started again (after a kill, say)
        keeps the store unless told otherwise."""
        ready = self.workdir / f"broker-{len(self.processes)}.endpoint"
        argv = ["start", "--bind", bind, "--ready-file", str(ready), "--log-level", self.log_level]
        if "--store" not in args:
            argv += ["--store", str(store if store is not None else self.store)]
        self.broker = self._start("zbroker", [*argv, *args])
        self.url = self._wait_for(
            lambda: _read(ready), f"the broker to listen ({ready.name})", [self.broker]
        )
        # It writes the file once bound, just before it serves: a RUN it sends comes later.
        self.listening_since = min(ready.stat().st_mtime, time.time())
        return self.broker

    def start_node(
        self,
        *args: str,
        functions: str | Iterable[str] = ("math",),
        concurrency: int | None = 1,
        name: str | None = None,
    ) -> Process:
        """`znode` with these function sets (one, or several) and `concurrency` processes (None:
        none said, as `args` with --min/--max want), named `name` (by default node0, node1,
        ...); returns at once (see `wait_for_nodes`)."""
        name = name or f"node{len(self.nodes)}"
        argv = ["--broker", self.url, "--name", name]
        if concurrency is not None:
            argv += ["--concurrency", str(concurrency)]
        for function_set in [functions] if isinstance(functions, str) else functions:
            argv += ["--functions", function_set]
        node = self._start("znode", [*argv, "--log-level", self.log_level, *args], name)
        self.nodes.append(node)
        return node

    def start_monitor(self, *args: str, listen: str = "127.0.0.1:0") -> str:
        """`zbroker monitor` for this cluster's broker (the dashboard and /metrics) on
        `listen`; returns its URL once it serves."""
        ready = self.workdir / f"monitor-{len(self.processes)}.url"
        argv = ["monitor", "--broker", self.url, "--listen", listen, "--ready-file", str(ready)]
        monitor = self._start("zbroker", [*argv, "--log-level", self.log_level, *args], "monitor")
        return self._wait_for(lambda: _read(ready), "the monitor to serve", [monitor])

    def _start(self, script: str, argv: list[str], name: str | None = None) -> Process:
        name = name or script
        log_path = self.workdir / f"{name}-{len(self.processes)}.log"
        env = None if self.env is None else {**os.environ, **self.env}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [*command(script), *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    # ------------------------------------------------------------------ watching

    def status(self, timeout: float = 2.0, all_nodes: bool = False) -> dict[str, Any]:
        """The broker's STATUS_REPLY body (listing every node with `all_nodes`)."""
        with ReqLink(self.url, resend_interval=timeout, keys=self.keys) as link:
            return ControlClient(link).status(timeout=timeout, all_nodes=all_nodes)

    def node_names(self) -> list[str]:
        """The names of the registered node processes (empty while the broker is silent)."""
        try:
            return sorted(node["name"] for node in self.status(all_nodes=True)["nodes"])
        except (BrokerTimeout, BrokerUnreachable):
            return []

    def wait_for_nodes(self, count: int, timeout: float = START_TIMEOUT) -> None:
        """Until at least `count` node processes are registered."""
        live = [p for p in self.processes if p.alive()]
        self._wait_for(
            lambda: len(self.node_names()) >= count, f"{count} node processes to register", live
        )

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        what: str,
        timeout: float = START_TIMEOUT,
        processes: Iterable[Process] | None = None,
    ) -> T:
        """Poll `predicate` until it gives something true; ClusterError if `processes` (by
        default every live one) die meanwhile, or after `timeout`."""
        watched = [p for p in self.processes if p.alive()] if processes is None else processes
        return self._wait_for(predicate, what, list(watched), timeout)

    def _wait_for(
        self,
        predicate: Callable[[], T | None],
        what: str,
        watched: list[Process],
        timeout: float = START_TIMEOUT,
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            for process in watched:
                if not process.alive():
                    raise ClusterError(
                        f"{process.name} exited with {process.popen.returncode} while waiting "
                        f"for {what}; its log ends:\n{process.log()[-3000:]}"
                    )
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.02)

    def logs(self) -> str:
        """Every process's log, each under a heading."""
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.log()}" for p in self.processes)

    # ------------------------------------------------------------------ stopping

    def close(self) -> None:
        """Stop every process (nodes first, the broker last) and reap them all."""
        for process in reversed(self.processes):
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=15)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _processes(node_args: Sequence[str]) -> int:
    """Node processes one `znode` with these arguments starts (its --concurrency)."""
    args = list(node_args)
    for flag in ("--concurrency", "-c"):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return 1
