"""`zbroker start` on stores that cannot be trusted: refused at start with one line naming the
file and what to do (exit 1), never started empty; and a store that fails while the broker
runs stops it with exit 74 and the real cause, so that a supervisor restarts it."""

from __future__ import annotations

import resource
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from broker.core.journal import SaveTask
from broker.protocol import TaskSpec
from broker.store import Store
from client import Client, ClientError, TaskFailed
from client.cluster import command
from tests.e2e.conftest import Cluster
from tests.support import wait_until


def start_on(store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`zbroker start` on `store`, expected to refuse it and exit at once."""
    argv = [*command("zbroker"), "start", "--bind", "tcp://127.0.0.1:0", "--store", str(store)]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=30)


def refusal(done: subprocess.CompletedProcess[str], store: Path) -> str:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(store) in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_an_empty_file_is_refused_not_started_as_an_empty_store(tmp_path: Path) -> None:
    store = tmp_path / "zbroker.sqlite3"
    store.write_bytes(b"")
    line = refusal(start_on(store), store)
    assert "empty" in line
    assert store.read_bytes() == b""  # left as it was


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "notes.txt"
    store.write_text("my notes, not a store\n" * 100)
    refusal(start_on(store), store)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    assert "not a zbroker store" in refusal(start_on(other), other)


def test_a_row_out_of_the_protocols_limits_is_refused(tmp_path: Path) -> None:
    store_path = tmp_path / "zbroker.sqlite3"
    store = Store.open(store_path)
    store.apply([SaveTask(TaskSpec("t1", "f", b"[]", priority=99), 1, 0.0)], 0.0)
    store.close()
    line = refusal(start_on(store_path), store_path)
    assert "t1" in line and "priority" in line


def test_an_answer_whose_error_is_not_json_is_refused(cluster: Cluster) -> None:
    cluster.start_broker()
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=10) as client, pytest.raises(TaskFailed):
        client.execute("divide", 1, 0, retries=0)
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGTERM)
    assert cluster.broker.wait(15) == 0
    with sqlite3.connect(cluster.store) as conn:
        conn.execute("UPDATE results SET error = 'not json'")
    line = refusal(start_on(cluster.store), cluster.store)
    assert "error" in line


def test_a_full_disk_under_the_dead_letter_log_stops_the_broker_with_74(
    cluster: Cluster,
) -> None:
    """/dev/full is a real file on which every write fails with ENOSPC, as on a full disk."""
    broker = cluster.start_broker("--dlq-log", "/dev/full")
    cluster.start_node(functions="math")
    cluster.wait_nodes("node0")
    with Client(cluster.url, timeout=10) as client, pytest.raises(TaskFailed):
        client.execute("divide", 1, 0, retries=0)  # a dead letter: written to the log
    assert broker.wait(15) == 74
    assert "disk full writing /dev/full" in broker.log()


def test_a_store_that_cannot_grow_stops_the_broker_with_74(cluster: Cluster) -> None:
    """The broker runs under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so the
    store's writes fail for real once the answers it keeps have grown it past the limit."""
    store, ready = cluster.tmp / "zbroker.sqlite3", cluster.tmp / "endpoint"
    argv = [*command("zbroker"), "start", "--bind", "tcp://127.0.0.1:0", "--store", str(store)]
    argv += ["--ready-file", str(ready)]

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))

    log = cluster.tmp / "limited-broker.log"
    with log.open("wb") as out:
        broker = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_file_size
        )
    try:
        wait_until(ready.exists, 15, what="the broker to listen")
        cluster.url = ready.read_text().strip()
        cluster.start_node(functions="util")
        cluster.wait_nodes("node0")
        big = "x" * 20_000  # each answer kept in the store holds it
        with Client(cluster.url, timeout=5) as client:
            for i in range(200):
                if broker.poll() is not None:
                    break
                try:
                    client.execute("echo", big, task_id=f"t{i}")
                except ClientError:  # the broker stopped before answering
                    break
        assert broker.wait(15) == 74, log.read_text()
        text = log.read_text()
        assert f"cannot write store {store}" in text or f"disk full writing {store}" in text, text
        assert "Traceback" not in text
    finally:
        if broker.poll() is None:
            broker.kill()
        broker.wait(10)
