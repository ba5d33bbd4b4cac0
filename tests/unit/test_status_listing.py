"""STATUS at scale (protocol.md 3.10, 3.11): by default the busiest nodes and the sums of all
of them by function; every node in pages on request."""

from __future__ import annotations

from typing import Any

from broker import protocol as p
from tests.unit.core import Core, execute, register, runs

CLIENT = b"client-1"


def nodes(count: int, functions: tuple[str, ...] = ("f",), first: int = 0) -> Core:
    core = Core()
    for i in range(first, first + count):
        core.handle(f"n{i:03d}".encode(), register(f"n{i:03d}", functions), 0.0)
    return core


def ask(core: Core, request: p.Status) -> dict[str, Any]:
    [reply] = core.handle(CLIENT, request, 1.0)
    assert isinstance(reply.message, p.StatusReply)
    return reply.message.body


def names(body: dict[str, Any]) -> list[str]:
    listed = body["nodes"]
    assert isinstance(listed, list)
    return [n["name"] for n in listed]


def test_a_few_nodes_are_all_listed_in_the_order_they_registered() -> None:
    core = nodes(5)
    body = ask(core, p.Status())
    assert names(body) == [f"n{i:03d}" for i in range(5)]
    assert body["nodes_total"] == 5 and body["nodes_listed"] == "busiest"


def test_many_nodes_list_the_busiest_and_count_them_all() -> None:
    core = nodes(120)
    for i in range(3):  # three tasks: least-loaded places them on three idle nodes
        assert len(runs(core.handle(CLIENT, execute(f"t{i}"), 0.5))) == 1
    busy = sorted(n["name"] for n in core.status()["nodes"] if n["busy"])
    body = ask(core, p.Status())
    assert body["nodes_total"] == 120
    listed = names(body)
    assert len(listed) == p.STATUS_NODES
    assert sorted(listed[:3]) == busy  # the busiest first
    assert ask(core, p.Status(limit=2))["nodes_total"] == 120
    assert len(names(ask(core, p.Status(limit=2)))) == 2
    assert names(ask(core, p.Status(limit=0))) == []


def test_every_node_in_pages_in_the_order_they_registered() -> None:
    core = nodes(120)
    pages = []
    offset = 0
    while True:
        body = ask(core, p.Status(p.NODES_ALL, offset, 50))
        assert body["nodes_listed"] == "all" and body["nodes_offset"] == offset
        page = names(body)
        pages += page
        offset += len(page)
        if len(page) < 50:
            break
    assert pages == [f"n{i:03d}" for i in range(120)]


def test_by_function_sums_every_node_and_the_queue() -> None:
    core = nodes(60, ("f", "g"))
    core.handle(b"x", register("x", ("g", "h"), capacity=4), 0.0)
    for i in range(3):
        core.handle(CLIENT, execute(f"t{i}", "f"), 0.5)
    core.handle(CLIENT, execute("q", "nobody"), 0.5)  # answered 127: not queued
    body = ask(core, p.Status(limit=1))
    assert body["by_function"] == {
        "f": {"nodes": 60, "slots": 60, "busy": 3, "held": 0, "completed": 0, "queued": 0},
        "g": {"nodes": 61, "slots": 64, "busy": 3, "held": 0, "completed": 0, "queued": 0},
        "h": {"nodes": 1, "slots": 4, "busy": 0, "held": 0, "completed": 0, "queued": 0},
    }
    assert body["slots_total"] == 64 and body["slots_busy"] == 3
    core.handle(b"n000", p.Deregister(), 0.6)  # draining nodes still count
    assert ask(core, p.Status(limit=1))["by_function"]["f"]["nodes"] == 60
