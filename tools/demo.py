"""A broker, two nodes and real tasks on this machine, as a user would run them.

Run through `python3 tools/dev.py demo` (which sets up .venv first). Starts `zbroker start` on
a free loopback port, two `znode --functions math` processes, then submits tasks with
`zsubmit` and with the Python client (one by one and pipelined), shows `zbroker status`, and
stops everything with SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track

from broker.control import BrokerUnreachable, status
from client import Client

console = Console()
BIN = Path(sys.executable).parent


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=out, stderr=out)


def wait_for(predicate: object, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 20
    while not predicate():  # type: ignore[operator]
        for proc in procs:
            if proc.poll() is not None:
                sys.exit(f"error: {proc.args} exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            sys.exit(f"error: timed out waiting for {what}")
        time.sleep(0.05)


def nodes_registered(url: str, count: int) -> bool:
    try:
        return len(status(url, timeout=0.5)["nodes"]) >= count
    except BrokerUnreachable:
        return False


def show(command: list[str]) -> None:
    console.print(f"[bold]$ {' '.join(command)}[/bold]")
    subprocess.run([str(BIN / command[0]), *command[1:]], check=False)


def tasks(url: str) -> None:
    show(["zsubmit", "--broker", url, "multiply", "5", "10"])
    show(["zsubmit", "--broker", url, "sum_squares", "1", "10000000"])
    show(["zsubmit", "--broker", url, "--json", "hash_text", "hello world"])
    show(["zsubmit", "--broker", url, "divide", "1", "0"])
    console.print("[bold]Python client[/bold]")
    with Client(url) as client:
        console.print(f'client.execute("multiply", 5, 10) -> {client.execute("multiply", 5, 10)}')
        console.print(f'client.execute("fib", 90) -> {client.execute("fib", 90)}')
        numbers = range(10**12, 10**12 + 2000)
        started = time.perf_counter()
        flags = list(
            track(
                client.imap("is_prime", ((n,) for n in numbers)),
                total=len(numbers),
                description="is_prime over 2,000 numbers (pipelined)",
            )
        )
        elapsed = time.perf_counter() - started
        console.print(f"{sum(flags)} primes among {len(numbers)} numbers in {elapsed:.2f} s")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ztb-demo-"))
    ready = workdir / "broker.endpoint"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker = start(
            ["zbroker", "start", "--bind", "tcp://127.0.0.1:0", "--ready-file", str(ready)],
            workdir / "broker.log",
        )
        procs.append(broker)
        wait_for(lambda: ready.exists() and ready.read_text().strip(), "the broker", procs)
        url = ready.read_text().strip()
        console.print(f"broker listening on {url} (logs in {workdir})")
        for i in (1, 2):
            argv = ["znode", "--broker", url, "--functions", "math", "--name", f"demo-node-{i}"]
            procs.append(start(argv, workdir / f"node{i}.log"))
        wait_for(lambda: nodes_registered(url, 2), "two nodes to register", procs)
        tasks(url)
        show(["zbroker", "status", "--broker", url])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=10) for proc in reversed(procs)]
        console.print(f"stopped nodes and broker with SIGTERM; exit codes {codes}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
