"""CurveZMQ end to end: keys made by `zbroker keys`, a broker with --curve and --authorized,
nodes and clients with their keys; unknown keys refused with a clear message and nothing
run; keys added and removed without a restart; no listening beyond loopback without keys."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from broker.security import PeerKeys, load_public
from client import BrokerError, BrokerUnreachable, Client, NotFound, TaskFailed
from client.cluster import command
from tests.e2e.conftest import Cluster
from tests.support import wait_until


def zbroker(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("zbroker"), *argv], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def keys(tmp: Path) -> Path:
    """broker.key/.pub, node1 and alice (authorized), mallory (not) in `tmp`; the public keys
    let in under tmp/authorized/{nodes,clients,admins}."""
    authorized = tmp / "authorized"
    for role in ("nodes", "clients", "admins"):
        (authorized / role).mkdir(parents=True)
    for name in ("broker", "node1", "alice", "bob", "root", "mallory"):
        made = zbroker("keys", "new", name, "--dir", str(tmp))
        assert made.returncode == 0, made.stderr
    shutil.copy(tmp / "node1.pub", authorized / "nodes")
    shutil.copy(tmp / "alice.pub", authorized / "clients")
    shutil.copy(tmp / "bob.pub", authorized / "clients")
    shutil.copy(tmp / "root.pub", authorized / "admins")
    return authorized


def curve_cluster(cluster: Cluster, tmp: Path) -> Path:
    authorized = keys(tmp)
    args = ["--store", "none", "--curve", str(tmp / "broker.key")]
    cluster.start_broker(*args, "--authorized", str(authorized))
    cluster.keys = PeerKeys.load(tmp / "alice.key", tmp / "broker.pub")
    node = ["--curve", str(tmp / "node1.key"), "--broker-key", str(tmp / "broker.pub")]
    cluster.start_node(*node, name="n1", functions="math")
    cluster.wait_nodes("n1")
    return authorized


def test_keys_are_written_once_and_the_secret_stays_private(tmp_path: Path) -> None:
    made = zbroker("keys", "new", "node1", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    secret, public = tmp_path / "node1.key", tmp_path / "node1.pub"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    again = zbroker("keys", "new", "node1", "--dir", str(tmp_path))
    assert again.returncode == 1 and "never overwritten" in again.stderr
    shown = zbroker("keys", "show", str(public))
    assert shown.returncode == 0 and load_public(public).decode() in shown.stdout
    bad = zbroker("keys", "show", str(tmp_path / "nothing.pub"))
    assert bad.returncode == 1 and "zbroker keys new" in bad.stderr


def test_authorized_peers_run_tasks_over_curve(cluster: Cluster, tmp_path: Path) -> None:
    curve_cluster(cluster, tmp_path)
    with Client(cluster.url, curve=tmp_path / "alice.key", broker_key=tmp_path / "broker.pub") as c:
        assert c.execute("multiply", 6, 7) == 42
        assert c.map("add", [(i, 1) for i in range(100)]) == [i + 1 for i in range(100)]
    shown = cluster.zsubmit(
        "--curve", str(tmp_path / "alice.key"), "--broker-key", str(tmp_path / "broker.pub"),
        "multiply", "5", "10",
    )  # fmt: skip
    assert shown.returncode == 0 and shown.stdout.strip() == "50", shown.stderr
    status = cluster.zbroker(
        "status", "--json", "--curve", str(tmp_path / "alice.key"),
        "--broker-key", str(tmp_path / "broker.pub"),
    )  # fmt: skip
    assert status.returncode == 0 and '"curve": true' in status.stdout


def test_an_unknown_key_is_refused_with_a_clear_message_and_nothing_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    curve_cluster(cluster, tmp_path)
    refused = cluster.zsubmit(
        "--curve", str(tmp_path / "mallory.key"), "--broker-key", str(tmp_path / "broker.pub"),
        "--connect-timeout", "2", "multiply", "5", "10",
    )  # fmt: skip
    assert refused.returncode == 3
    assert "refused this client's CURVE key" in refused.stderr
    plain = cluster.zsubmit("--connect-timeout", "2", "multiply", "5", "10")
    assert plain.returncode == 3 and "--curve" in plain.stderr
    assert cluster.broker is not None
    fingerprint = zbroker("keys", "show", str(tmp_path / "mallory.pub")).stdout.split()[-1]
    wait_until(
        lambda: fingerprint.rstrip(")") in cluster.broker.log(),  # type: ignore[union-attr]
        10,
        what="the broker to log the refused key's fingerprint",
    )
    status = cluster.status()
    assert status["counters"].get("accepted", 0) == 0, "nothing ran"
    assert status["metrics"]["refused_keys"] >= 1


def test_a_node_without_an_authorized_key_gets_no_work(cluster: Cluster, tmp_path: Path) -> None:
    curve_cluster(cluster, tmp_path)
    fake = ["--curve", str(tmp_path / "mallory.key"), "--broker-key", str(tmp_path / "broker.pub")]
    impostor = cluster.start_node(*fake, name="impostor", functions="math")
    with Client(cluster.url, curve=tmp_path / "alice.key", broker_key=tmp_path / "broker.pub") as c:
        assert c.map("add", [(i, 0) for i in range(50)]) == list(range(50))
    assert impostor.alive()
    assert cluster.node_names() == ["n1"]


def test_keys_added_and_removed_count_without_a_restart(cluster: Cluster, tmp_path: Path) -> None:
    authorized = curve_cluster(cluster, tmp_path)
    key, broker_key = tmp_path / "mallory.key", tmp_path / "broker.pub"

    def answered() -> bool:
        try:
            with Client(cluster.url, connect_timeout=1, curve=key, broker_key=broker_key) as c:
                return bool(c.execute("add", 1, 1, timeout=2) == 2)
        except BrokerUnreachable:
            return False

    assert not answered()
    shutil.copy(tmp_path / "mallory.pub", authorized / "clients")

    wait_until(answered, 5, what="the added key to be let in", interval=0.2)
    os.remove(authorized / "clients" / "mallory.pub")
    wait_until(lambda: not answered(), 5, what="the removed key to be refused", interval=0.2)


def test_no_listening_beyond_loopback_without_keys(tmp_path: Path) -> None:
    refused = zbroker("start", "--bind", "tcp://0.0.0.0:0", "--store", "none")
    assert refused.returncode == 2
    assert "zbroker keys new" in refused.stderr and "--insecure" in refused.stderr
    lacking = zbroker("start", "--curve", str(tmp_path / "none.key"), "--store", "none")
    assert lacking.returncode == 2 and "--authorized" in lacking.stderr


def test_insecure_listens_beyond_loopback_and_says_so(cluster: Cluster) -> None:
    broker = cluster.start_broker("--store", "none", "--insecure", bind="tcp://0.0.0.0:0")
    assert cluster.url.startswith("tcp://0.0.0.0:")
    wait_until(lambda: "without CURVE (--insecure)" in broker.log(), 10, what="the warning")


def as_key(tmp: Path, name: str) -> list[str]:
    return ["--curve", str(tmp / f"{name}.key"), "--broker-key", str(tmp / "broker.pub")]


def test_each_role_sends_only_its_commands(cluster: Cluster, tmp_path: Path) -> None:
    curve_cluster(cluster, tmp_path)
    alice = {"curve": tmp_path / "alice.key", "broker_key": tmp_path / "broker.pub"}
    with Client(cluster.url, **alice) as c, pytest.raises(TaskFailed):  # type: ignore[arg-type]
        c.execute("divide", 1, 0)  # a dead letter, for the purges below
    refused = cluster.zbroker("dlq", "purge", "--all", *as_key(tmp_path, "alice"))
    assert refused.returncode == 1 and "admin's key" in refused.stderr, refused.stderr
    purged = cluster.zbroker("dlq", "purge", "--all", *as_key(tmp_path, "root"))
    assert purged.returncode == 0, purged.stderr
    node_key = {"curve": tmp_path / "node1.key", "broker_key": tmp_path / "broker.pub"}
    with (
        Client(cluster.url, **node_key) as c,  # type: ignore[arg-type]
        pytest.raises(BrokerError) as forbidden,
    ):
        c.execute("add", 1, 2)
    assert forbidden.value.code == "forbidden" and "client's key" in forbidden.value.message
    posing = cluster.start_node(*as_key(tmp_path, "alice"), name="posing", functions="math")
    wait_until(
        lambda: cluster.status()["counters"].get("refused_forbidden", 0) >= 2,
        10,
        what="the REGISTER of a client's key refused",
    )
    assert posing.alive() and cluster.node_names() == ["n1"]


def test_a_removed_key_is_refused_on_the_connection_it_has(
    cluster: Cluster, tmp_path: Path
) -> None:
    authorized = curve_cluster(cluster, tmp_path)
    shutil.copy(tmp_path / "mallory.pub", authorized / "clients")
    keys = {"curve": tmp_path / "mallory.key", "broker_key": tmp_path / "broker.pub"}

    def let_in() -> bool:  # a refused handshake is not tried again: a new client each time
        try:
            with Client(cluster.url, connect_timeout=1, **keys) as c:  # type: ignore[arg-type]
                return bool(c.execute("add", 1, 1, timeout=2) == 2)
        except BrokerUnreachable:
            return False

    wait_until(let_in, 5, what="the added key let in", interval=0.2)
    with Client(cluster.url, **keys) as c:  # type: ignore[arg-type]
        assert c.execute("add", 1, 1) == 2
        os.remove(authorized / "clients" / "mallory.pub")

        def refused() -> bool:
            try:
                c.execute("add", 1, 1, timeout=2)
            except BrokerError as exc:
                return exc.code == "forbidden"
            return False

        wait_until(refused, 5, what="the open connection refused", interval=0.2)


def test_tasks_submit_tasks_with_their_node_key(cluster: Cluster, tmp_path: Path) -> None:
    authorized = keys(tmp_path)
    args = ["--store", "none", "--curve", str(tmp_path / "broker.key")]
    cluster.start_broker(*args, "--authorized", str(authorized))
    cluster.keys = PeerKeys.load(tmp_path / "alice.key", tmp_path / "broker.pub")
    node = as_key(tmp_path, "node1")
    cluster.start_node(*node, functions="tests.nested_tasks", concurrency=2)
    cluster.wait_nodes("node0.0", "node0.1")
    with Client(cluster.url, curve=tmp_path / "alice.key", broker_key=tmp_path / "broker.pub") as c:
        assert c.execute("sum_of_squares", 5) == sum(i * i for i in range(5))


def test_a_client_key_cannot_read_or_cancel_another_clients_task(
    cluster: Cluster, tmp_path: Path
) -> None:
    curve_cluster(cluster, tmp_path)
    broker_pub = tmp_path / "broker.pub"
    alice = Client(cluster.url, curve=tmp_path / "alice.key", broker_key=broker_pub)
    bob = Client(cluster.url, curve=tmp_path / "bob.key", broker_key=broker_pub)
    root = Client(cluster.url, curve=tmp_path / "root.key", broker_key=broker_pub)
    with alice, bob, root:
        assert alice.execute("multiply", 2, 3, task_id="report") == 6
        with pytest.raises(NotFound):
            bob.result("report")  # alice's, finished: not bob's to read
        with pytest.raises(NotFound):
            bob.cancel("report")
        # The same id from bob is a task of bob's, with his arguments: no conflict.
        assert bob.execute("multiply", 4, 5, task_id="report") == 20
        assert alice.result("report") == 6 and bob.result("report") == 20
        # An admin cancels anyone's task by its reference (KEY|ID, as logs and DLQ show).
        busy = alice.submit("sleep", 30, task_id="busy")
        alice_key = load_public(tmp_path / "alice.pub").decode()
        with pytest.raises(NotFound):
            bob.cancel(f"{alice_key}|busy")  # a client's key reaches its own scope only
        assert root.cancel(f"{alice_key}|busy") in ("queued", "running")
        with pytest.raises(TaskFailed) as cancelled:
            busy.result(timeout=10)
        assert cancelled.value.exit_code == 130
