"""A broker, two nodes and real tasks on this machine, as a user would run them.

Run through `python3 tools/dev.py demo` (which sets up .venv first). Makes CurveZMQ keys for
the broker, the nodes and the user (`zbroker keys new`), starts `zbroker start --curve` on a
free loopback port and two `znode --functions math` processes with their keys through the
project's cluster launcher (client.cluster.LocalCluster), then submits tasks with `zsubmit`
(a job split into 100 parts, and a failure and a timeout, which end in the dead-letter
queue) and with the Python client (one by one, one passing its result to the next, and
pipelined), shows `zbroker status`, and stops everything with SIGTERM.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import track

from broker.security import PeerKeys
from client import Client
from client.cluster import LocalCluster, command

console = Console()
KEYS: list[str] = []  # the user's --curve and --broker-key, added to every command shown


def show(argv: list[str], keyed: bool = True) -> None:
    """Run a console script (`zsubmit`, `zbroker`) as a user types it, showing the line."""
    if keyed:
        # zbroker's subcommands take their options anywhere; zsubmit's before the function
        argv = [*argv, *KEYS] if argv[0] == "zbroker" else [argv[0], *KEYS, *argv[1:]]
    console.print(f"[bold]$ {' '.join(argv)}[/bold]")
    subprocess.run([*command(argv[0]), *argv[1:]], check=False)


def make_keys(tmp: Path) -> Path:
    """The broker's, each node's and the user's key pairs; the public keys let in under
    tmp/authorized. Returns that directory."""
    authorized = tmp / "authorized"
    for directory in ("nodes", "clients", "admins"):
        (authorized / directory).mkdir(parents=True)
    roles: list[tuple[str, str | None]] = [
        ("broker", None),
        ("demo-node", "nodes"),
        ("demo-user", "admins"),
    ]
    for name, role in roles:
        show(["zbroker", "keys", "new", name, "--dir", str(tmp)], keyed=False)
        if role is not None:  # the broker lets its public key in
            console.print(f"[bold]$ cp {tmp}/{name}.pub {authorized}/{role}/[/bold]")
            shutil.copy(tmp / f"{name}.pub", authorized / role)
    return authorized


def tasks(url: str) -> None:
    show(["zsubmit", "--broker", url, "multiply", "5", "10"])
    show(["zsubmit", "--broker", url, "sum_squares", "1", "10000000"])
    # the same sum as a job of 100 parts, each a task on either node, then combined
    show(["zsubmit", "--broker", url, "--split", "100", "sum_squares", "1", "10000000"])
    show(["zsubmit", "--broker", url, "--json", "hash_text", "hello world"])
    show(["zsubmit", "--broker", url, "--retries", "0", "divide", "1", "0"])  # fails at once
    # stopped after 1 s: its node process is replaced, and the task is a dead letter
    show(["zsubmit", "--broker", url, "--retries", "0", "--task-timeout", "1", "sleep", "30"])
    show(["zbroker", "dlq", "list", "--broker", url])
    console.print("[bold]Python client[/bold]")
    with Client(url, curve=KEYS[1], broker_key=KEYS[3]) as client:
        console.print(f'client.execute("multiply", 5, 10) -> {client.execute("multiply", 5, 10)}')
        console.print(f'client.execute("fib", 90) -> {client.execute("fib", 90)}')
        a = client.submit("add", 1, 2)
        b = client.submit("multiply", a, 10)  # starts once `a` succeeded, with its result
        console.print(f'a = submit("add", 1, 2); submit("multiply", a, 10) -> {b.result()}')
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
        authorized = make_keys(Path(tmp))
        broker_key = str(Path(tmp) / "broker.pub")
        user_key = str(Path(tmp) / "demo-user.key")
        KEYS[:] = ["--curve", user_key, "--broker-key", broker_key]
        curve = ["--curve", str(Path(tmp) / "broker.key"), "--authorized", str(authorized)]
        cluster = LocalCluster(tmp, log_level="INFO", broker_args=curve)
        cluster.keys = PeerKeys.load(user_key, broker_key)
        node_key = ["--curve", str(Path(tmp) / "demo-node.key")]
        with cluster:
            for name in ("demo-node-1", "demo-node-2"):
                node = [*node_key, "--broker-key", broker_key]
                cluster.start_node(*node, functions=["math"], concurrency=1, name=name)
            cluster.wait_for_nodes(2)
            url = cluster.url
            console.print(
                f"broker listening on {url} with CURVE; two nodes registered (logs in {tmp})"
            )
            tasks(url)
            show(["zbroker", "status", "--broker", url])
        codes = [process.popen.returncode for process in cluster.processes]
        console.print(f"stopped the broker and both nodes with SIGTERM; exit codes {codes}")


if __name__ == "__main__":
    main()
