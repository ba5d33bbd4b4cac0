"""A broker, two nodes and real tasks on this machine, as a user would run them.

Run through `python3 tools/dev.py demo` (which sets up .venv first). Starts `zbroker start` on
a free loopback port, two `znode --functions math` processes, then submits tasks with
`zsubmit` (a failure and a timeout among them, which end in the dead-letter queue) and with
the Python client (one by one and pipelined), shows `zbroker status`, and stops everything
with SIGTERM.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster import Cluster  # type: ignore[import-not-found]
from rich.console import Console
from rich.progress import track

from client import Client

console = Console()
BIN = Path(sys.executable).parent


def show(command: list[str]) -> None:
    console.print(f"[bold]$ {' '.join(command)}[/bold]")
    subprocess.run([str(BIN / command[0]), *command[1:]], check=False)


def tasks(url: str) -> None:
    show(["zsubmit", "--broker", url, "multiply", "5", "10"])
    show(["zsubmit", "--broker", url, "sum_squares", "1", "10000000"])
    show(["zsubmit", "--broker", url, "--json", "hash_text", "hello world"])
    show(["zsubmit", "--broker", url, "--retries", "0", "divide", "1", "0"])  # fails at once
    # stopped after 1 s: its node process is replaced, and the task is a dead letter
    show(["zsubmit", "--broker", url, "--retries", "0", "--task-timeout", "1", "sleep", "30"])
    show(["zbroker", "dlq", "list", "--broker", url])
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
    with tempfile.TemporaryDirectory(prefix="ztb-demo-") as tmp:
        cluster = Cluster(
            Path(tmp),
            nodes=2,
            functions="math",
            log_level="INFO",
            node_args=["--concurrency", "1"],
            name_prefix="demo-node",
        )
        with cluster as url:
            console.print(f"broker listening on {url}; two nodes registered (logs in {tmp})")
            tasks(url)
            show(["zbroker", "status", "--broker", url])
        codes = [proc.returncode for proc in cluster.procs]
        console.print(f"stopped the broker and both nodes with SIGTERM; exit codes {codes}")


if __name__ == "__main__":
    main()
