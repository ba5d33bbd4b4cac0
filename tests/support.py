"""Helpers shared by the integration and end-to-end tests: polling with deadlines and
child processes that are always reaped and whose logs are shown when a test fails."""

from __future__ import annotations

import importlib.util
import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

from client.cluster import Process

T = TypeVar("T")


class Watched(Protocol):
    """A child process a wait keeps an eye on (a client.cluster.Process)."""

    name: str

    def alive(self) -> bool: ...

    def log(self) -> str: ...


BIN = Path(sys.executable).parent


@dataclass
class Spawner:
    """Starts console scripts from this virtualenv; `close()` reaps every one of them."""

    directory: Path
    procs: list[Process] = field(default_factory=list)

    def start(self, name: str, *argv: str) -> Process:
        log_path = self.directory / f"{name}-{len(self.procs)}.log"
        exe = BIN / argv[0]
        command = [str(exe) if exe.exists() else argv[0], *argv[1:]]
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc = Process(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.log()}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stop(timeout=3.0)
            except Exception:  # reaping must go on for the others
                proc.popen.kill()


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    *,
    what: str = "condition",
    alive: Iterable[Watched] = (),
    interval: float = 0.02,
) -> T:
    """Poll `predicate` until it returns something truthy; fail early if a process died."""
    watched = list(alive)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        for proc in watched:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (for what draws only on one)."""

    def isatty(self) -> bool:
        return True


def interruptible() -> None:
    """A `preexec_fn` that gives a child the default SIGINT: a test run started in the
    background by a shell without job control inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler, so a child that should react to Ctrl-C would not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_tool(tool: Path, *argv: str, timeout: float) -> tuple[int, str, str]:
    """Run a tool of tools/ as a user does: its exit code, stdout and stderr. On a timeout
    (or an interrupted test) it gets SIGTERM, which makes it stop every process it started
    (a SIGKILL would leave its broker and nodes running)."""
    proc = subprocess.Popen(
        [sys.executable, str(tool), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.terminate()
        proc.communicate(timeout=60)
        raise
    return proc.returncode, out.decode(), err.decode()


TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str, module: str | None = None) -> ModuleType:
    """tools/NAME.py, a script's module and not part of a package, imported as `module`
    (default NAME). Its own imports of other tools (`from chaos import ...`) resolve, as
    tools/ is on the path while it loads."""
    spec = importlib.util.spec_from_file_location(module or name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up
    added = str(TOOLS) not in sys.path
    if added:
        sys.path.insert(0, str(TOOLS))
    try:
        spec.loader.exec_module(loaded)
    finally:
        if added:
            sys.path.remove(str(TOOLS))
    return loaded
