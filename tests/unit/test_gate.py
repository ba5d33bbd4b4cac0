"""The broker's gate (broker/gate.py): what each role's key may send, keys no longer
authorized, and `replaces` held to the key that registered the process. Real key files in a
temporary directory; the sender's key is set as the gate's receive would set it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import protocol as p
from broker.gate import Gate
from broker.security import AuthorizedKeys, load_public, new_pair


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    for role, name in (("nodes", "node1"), ("nodes", "node2"), ("clients", "alice")):
        (tmp_path / role).mkdir(exist_ok=True)
        new_pair(tmp_path / role, name)
    (tmp_path / "admins").mkdir()
    new_pair(tmp_path / "admins", "root")
    new_pair(tmp_path, "mallory")  # not in any role's directory
    return Gate(AuthorizedKeys(tmp_path))


def key(gate: Gate, path: str) -> bytes:
    return load_public(gate.authorized.directory / path)


def refused(gate: Gate, who: str, message: p.Message) -> str | None:
    """The refusal's text for `message` from the key at `who` (None: it passes)."""
    gate.user = key(gate, who) if who else None
    command = p.encode(message)[1]
    error = gate.refusal(command, message)
    assert error is None or error.code == p.ERR_FORBIDDEN
    return None if error is None else error.message


def register(pid: int, replaces: int | None = None) -> p.Register:
    gone = None if replaces is None else p.Replaces(replaces, "killed")
    return p.Register("n", "h", pid, ("f",), 1, gone)


def execute(parent: str | None = None) -> p.Execute:
    return p.Execute(p.TaskSpec("t", "f", b"[]", parent=parent))


def test_each_role_sends_its_own_commands(gate: Gate) -> None:
    assert refused(gate, "nodes/node1.pub", register(10)) is None
    assert refused(gate, "nodes/node1.pub", p.Result("t", 0)) is None
    assert refused(gate, "clients/alice.pub", execute()) is None
    assert refused(gate, "clients/alice.pub", p.Status()) is None
    assert refused(gate, "admins/root.pub", p.Dlq("purge")) is None
    assert "node's key" in (refused(gate, "clients/alice.pub", register(11)) or "")
    assert "admin's key" in (refused(gate, "clients/alice.pub", p.Dlq("list")) or "")
    assert "client's" in (refused(gate, "nodes/node1.pub", p.Status()) or "")


def test_a_node_key_submits_only_what_its_tasks_submit(gate: Gate) -> None:
    assert "parent" in (refused(gate, "nodes/node1.pub", execute()) or "")
    assert refused(gate, "nodes/node1.pub", execute(parent="p")) is None
    batch = p.Batch((execute(parent="p"), execute()))
    assert refused(gate, "nodes/node1.pub", batch) is not None  # every task needs a parent


def test_unknown_keys_and_no_key_are_refused(gate: Gate) -> None:
    assert "not authorized" in (refused(gate, "mallory.pub", execute()) or "")
    assert "no CURVE key" in (refused(gate, "", execute()) or "")


def test_replaces_only_a_process_of_the_same_key(gate: Gate) -> None:
    assert refused(gate, "nodes/node1.pub", register(10)) is None
    assert "another key" in (refused(gate, "nodes/node2.pub", register(20, replaces=10)) or "")
    assert refused(gate, "nodes/node1.pub", register(11, replaces=10)) is None
    assert refused(gate, "nodes/node2.pub", register(21, replaces=99)) is None  # unknown: its own


def test_the_processes_remembered_for_replaces_are_bounded(gate: Gate) -> None:
    gate.max_registered = 3
    for pid in range(10, 20):
        assert refused(gate, "nodes/node1.pub", register(pid)) is None
    assert len(gate._registered) == 3
    # The newest are held to their key; the oldest forgotten (its own from then on).
    assert "another key" in (refused(gate, "nodes/node2.pub", register(30, replaces=19)) or "")
    assert refused(gate, "nodes/node2.pub", register(31, replaces=10)) is None
