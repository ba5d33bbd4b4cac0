"""tools/nodesim.py, briefly: its simulated nodes register with the real broker once each and
answer a real client's tasks; those told to vanish are found dead by the broker within its
expiry while the others stay; garbage from a broker is counted and skipped; a silent broker,
a DISCONNECT and an ERROR not_registered each make a node register again on a fresh socket,
claiming the sleep it still runs; held tasks are given back to RETRACT or cancelled by STOP,
and a sleep ends at its task timeout. How many nodes it carries is for benchmarks, not here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.protocol import (
    ERR_NOT_REGISTERED,
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_FUNCTION,
    Claim,
    Disconnect,
    Error,
    Result,
    Retract,
    Retracted,
    Stop,
    loads_payload,
)
from client import Client
from client.cluster import Process
from tests import fakes
from tests.e2e.conftest import INTERVAL, LIVENESS, Cluster, reaped_cluster
from tests.fakes import StartBroker
from tests.support import load_tool, wait_until

EXPIRY = INTERVAL * LIVENESS  # the test broker's: a silent node is dead after it

tool = load_tool("nodesim")  # tools/nodesim.py


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The e2e tier's cluster (short heartbeats), for the broker only; reaped after."""
    with reaped_cluster(request, tmp_path) as made:
        made.start_broker()
        yield made


def registered_names(cluster: Cluster, sim: Any, count: int) -> list[str]:
    """The broker's node names once it lists `count` of them (the simulator must live)."""

    def listed() -> list[str] | None:
        assert sim.alive(), "a nodesim worker died"
        names = cluster.node_names()  # every node, paged (protocol.md 3.10)
        return names if len(names) == count else None

    return wait_until(listed, 15, what=f"{count} nodes at the broker", alive=watched(cluster))


def watched(cluster: Cluster) -> list[Process]:
    assert cluster.broker is not None
    return [cluster.broker]


def test_nodes_register_once_each_and_run_a_real_clients_tasks(cluster: Cluster) -> None:
    with tool.NodeSim(cluster.url, nodes=200, processes=2, functions=("multiply",)) as sim:
        stats = sim.wait_registered(timeout=15)
        assert stats["registers_sent"] == 200
        assert stats["register_counts"] == {"1": 200}
        names = registered_names(cluster, sim, 200)
        assert names == sorted(f"sim-{w}-{i}" for w in range(2) for i in range(100))

        with Client(cluster.url, timeout=15) as client:
            assert client.execute("multiply", 6, 7) == 42
            pairs = [(i, i + 3) for i in range(200)]
            assert client.map("multiply", pairs) == [a * b for a, b in pairs]

        stats = sim.stats()
        assert stats["answered"] == stats["runs"] == 201
        assert stats["malformed"] == stats["internal_errors"] == stats["errors"] == 0
        assert stats["broker_deaths"] == stats["disconnects"] == 0
        assert stats["registers_sent"] == 200
        counters = cluster.status()["counters"]
        assert counters.get("completed") == 201 and counters.get("nodes_registered") == 200


@pytest.mark.parametrize(
    ("how", "counters"),
    [("vanish", ("nodes_unreachable", "nodes_expired")), ("freeze", ("nodes_expired",))],
    ids=["vanish", "freeze"],
)
def test_vanished_or_frozen_nodes_are_dropped_within_the_expiry_and_the_others_stay(
    cluster: Cluster, how: str, counters: tuple[str, ...]
) -> None:
    """Vanished nodes close their connections, and a broker on this host finds them at its
    next send to them; frozen ones keep them open, and it finds them by their silence.
    Either way within the expiry (and a second for the test's polling)."""
    with tool.NodeSim(cluster.url, nodes=100, processes=2) as sim:
        sim.wait_registered(timeout=15)
        everyone = set(registered_names(cluster, sim, 100))

        names = getattr(sim, how)(20)
        assert len(set(names)) == 20 and set(names) <= everyone
        assert {name.split("-")[1] for name in names} == {"0", "1"}  # spread over both
        staying = sorted(everyone - set(names))
        wait_until(
            lambda: cluster.node_names() == staying,
            EXPIRY + 1.0,
            what=f"the broker to drop exactly the nodes that {how}",
            alive=watched(cluster),
        )

        stats = sim.stats()
        assert stats["nodes"] == stats["registered"] == 80
        assert stats["vanished" if how == "vanish" else "frozen"] == 20
        assert stats["registers_sent"] == 100
        assert stats["broker_deaths"] == stats["disconnects"] == 0
        found = cluster.status()["counters"]
        assert sum(found.get(counter, 0) for counter in counters) == 20


def test_garbage_from_the_broker_is_counted_and_skipped(fake_broker: StartBroker) -> None:
    broker = fake_broker(fakes.ignore_all)
    with tool.NodeSim(broker.url, nodes=1, processes=1) as sim:
        identity, register = broker.register(timeout=10)
        assert (register.name, register.pid, register.capacity) == ("sim-0-0", sim.pids[0], 1)
        assert register.functions == ("noop", "multiply", "sleep")
        assert register.stop and register.attempts == ()

        garbage = [
            (b"ZTB1", b"HEARTBEAT"),  # no empty delimiter
            (b"", b"ZTB2", b"HEARTBEAT"),  # another protocol version
            (b"", b"ZTB1", b"RUN", b"{not json", b"[]"),
            (b"", b"ZTB1", b"NONSENSE"),
            (b"", b"ZTB1", b"EXECUTE", b'{"task_id":"x","function":"noop"}', b"[]"),  # not for it
        ]
        for frames in garbage:
            broker.send_raw(identity, *frames)

        result = broker.call(identity, "multiply", 6, 7)
        assert (result.exit_code, loads_payload(result.result), result.attempt) == (EXIT_OK, 42, 1)
        unknown = broker.call(identity, "nosuch")
        assert unknown.exit_code == EXIT_UNKNOWN_FUNCTION
        assert unknown.error is not None and unknown.error.type == "UnknownFunction"
        bad = broker.call(identity, "multiply", "six", 7)
        assert bad.exit_code == 1 and bad.error is not None and bad.error.type == "TypeError"

        stats = sim.stats()
        assert stats["malformed"] == len(garbage)
        assert stats["internal_errors"] == 0
        assert stats["answered"] == 3 and stats["registered"] == 1
        assert sim.alive()


def test_silence_disconnect_and_not_registered_make_a_node_register_again(
    fake_broker: StartBroker,
) -> None:
    broker = fake_broker(fakes.ignore_all)
    with tool.NodeSim(broker.url, nodes=1, processes=1) as sim:
        first, _ = broker.register(timeout=10)
        broker.keepalive.discard(first)  # the broker says nothing more to this socket
        silent_since = time.monotonic()
        second, register = broker.register(timeout=5)
        assert second != first and register.attempts == ()
        assert time.monotonic() - silent_since >= fakes.INTERVAL * fakes.LIVENESS - fakes.KEEPALIVE
        assert sim.stats()["broker_deaths"] == 1

        broker.run(second, "s1", "sleep", 0.5)  # still running when the node registers again
        broker.send(second, Disconnect("go away"))
        third, register = broker.register(timeout=5)
        assert third != second and register.attempts == (Claim("s1", 1),)
        _, result = broker.result("s1", timeout=5)
        assert (result.exit_code, loads_payload(result.result)) == (EXIT_OK, 0.5)

        broker.send(third, Error(ERR_NOT_REGISTERED, "who are you?"))
        fourth, register = broker.register(timeout=5)
        assert fourth != third and register.attempts == ()

        stats = sim.stats()
        assert (stats["broker_deaths"], stats["disconnects"]) == (1, 2)
        assert stats["registers_sent"] == 4 and stats["register_counts"] == {"4": 1}


def test_held_tasks_are_given_back_or_cancelled_and_sleeps_end_at_their_timeout(
    fake_broker: StartBroker,
) -> None:
    broker = fake_broker(fakes.ignore_all)
    with tool.NodeSim(broker.url, nodes=1, processes=1, prefetch=2) as sim:
        identity, register = broker.register(timeout=10)
        assert (register.capacity, register.prefetch, register.stop) == (1, 2, True)
        broker.run(identity, "s1", "sleep", 0.3)  # its one slot
        broker.run(identity, "h1", "noop")  # held behind it
        broker.run(identity, "h2", "noop")
        broker.send(identity, Retract(("h1", "s1")))
        retracted = broker.take(Retracted).message
        assert retracted == Retracted(("h1",), ("s1",))
        broker.send(identity, Stop(("h2",)))
        _, stopped = broker.result("h2")
        assert stopped.exit_code == EXIT_CANCELLED and stopped.attempt == 1
        _, slept = broker.result("s1")
        assert (slept.exit_code, loads_payload(slept.result)) == (EXIT_OK, 0.3)

        broker.run(identity, "t1", "sleep", 60, task_timeout=0.1)
        _, late = broker.result("t1")
        assert late.exit_code == EXIT_TIMEOUT and late.error is not None
        assert late.error.type == "Timeout"
        assert broker.count(Result) == 0  # h1 was given back: no RESULT for it

        stats = sim.stats()
        assert (stats["runs"], stats["answered"], stats["retracts"], stats["stops"]) == (4, 3, 1, 1)
