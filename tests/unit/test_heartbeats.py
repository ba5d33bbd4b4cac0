"""The heartbeat interval grows with the node count within a budget (broker.core.heartbeats,
protocol.md 7.1): new nodes are told it in REGISTERED, nodes that adopt intervals in their
next HEARTBEAT, the others keep theirs; nobody is judged by an interval it has not heard."""

from __future__ import annotations

from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Send
from broker.core.heartbeats import HeartbeatInterval
from tests.unit.core import Core

BUDGET = 10  # node heartbeats a second: past 10 nodes, the interval grows


def budgeted() -> Core:
    return Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3, heartbeat_budget=BUDGET))


def join(core: Core, name: str, now: float = 0.0, adopts: bool = True) -> p.Registered:
    msg = p.Register(name, "h", 1, ("f",), 1, adopts_interval=adopts)
    [reply] = [s.message for s in core.handle(name.encode(), msg, now) if s.peer == name.encode()]
    assert isinstance(reply, p.Registered)
    return reply


def heartbeat_to(name: str, sends: list[Send]) -> p.Heartbeat | None:
    found = [s.message for s in sends if s.peer == name.encode()]
    assert all(isinstance(m, p.Heartbeat) for m in found)
    return found[0] if found else None  # type: ignore[return-value]


def test_the_interval_grows_in_steps_and_shrinks_once_the_nodes_have_halved() -> None:
    interval = HeartbeatInterval(1.0, 2500)
    seen = []
    for nodes in range(1, 10_001):
        if interval.resize(nodes):
            seen.append(interval.current)
    assert seen == [1.25, 1.562, 1.953, 2.441, 3.052, 3.815, 4.768]  # a few changes, not 7,500
    assert not interval.resize(6000)  # fewer, but not half
    assert interval.resize(2000) and interval.current == 1.0
    fixed = HeartbeatInterval(0.2, None)
    assert not fixed.resize(1_000_000) and fixed.current == 0.2


def test_new_nodes_are_told_the_grown_interval_and_the_others_hear_it_next() -> None:
    core = budgeted()
    first = [join(core, f"n{i:02d}") for i in range(10)]
    assert {r.heartbeat_interval for r in first} == {1.0}
    join(core, "old", adopts=False)  # the 11th node: the interval grows
    late = join(core, "n10")
    assert late.heartbeat_interval == 1.25
    assert core.status()["heartbeat_interval"] == 1.25
    sends = core.tick(1.0)  # the heartbeats of the first interval
    told = heartbeat_to("n00", sends)
    assert told is not None and told.interval == 1.25
    old = heartbeat_to("old", sends)
    assert old is not None and old.interval is None  # registered it without adopting
    # From now on n00 gets a heartbeat every 1.25 s, `old` every 1 s, as each was told.
    for name in ("n00", "old"):
        core.handle(name.encode(), p.Heartbeat(), 1.0)
    assert heartbeat_to("old", core.tick(2.0)) is not None
    assert heartbeat_to("n00", core.tick(2.1)) is None
    assert heartbeat_to("n00", core.tick(2.26)) is not None


def test_a_node_told_a_shorter_interval_is_judged_by_the_longer_one_a_while() -> None:
    core = budgeted()
    for i in range(24):  # 24 nodes: 2.441 s (x 3: dead after 7.3 s of silence)
        join(core, f"n{i:02d}")
    assert core.status()["heartbeat_interval"] == 2.441
    now = 0.0
    while now < 3.0:  # everyone hears the interval, and everyone is heard
        now = round(now + 0.5, 3)
        for i in range(24):
            core.handle(f"n{i:02d}".encode(), p.Heartbeat(), now)
        core.tick(now)
    for i in range(1, 24):  # all but n00 leave: the interval shrinks (to 1.25 s, as it
        core.handle(f"n{i:02d}".encode(), p.Deregister(), now)  # shrinks once halved)
        core.tick(now)
    core.handle(b"n00", p.Heartbeat(), now)
    assert core.status()["heartbeat_interval"] == 1.25
    told = None
    while told is None:  # the next heartbeat tells n00 the shorter interval
        now = round(now + 0.1, 3)
        told = heartbeat_to("n00", core.tick(now))
    assert told.interval == 1.25
    # n00 heard nothing more from `now` on: at 3.75 s it would be dead by the new interval,
    # but it may still heartbeat at the old one, so it is judged by that for now.
    silent_since = now
    core.tick(now + 4.0)
    assert core.registered(b"n00")
    core.tick(silent_since + 7.4)
    assert not core.registered(b"n00")


def test_nodes_that_register_together_are_sent_heartbeats_spread_over_the_interval() -> None:
    core = Core(SchedulerConfig(heartbeat_interval=1.0, liveness=3))
    names = [f"n{i}" for i in range(100)]
    for name in names:
        join(core, name, now=0.0)
    first: dict[str, float] = {}
    now = 0.0
    while now < 1.0 + 1e-9:  # the first interval, in steps of 10 ms
        for send in core.tick(now):
            if isinstance(send.message, p.Heartbeat):
                first.setdefault(send.peer.decode(), now)
        now = round(now + 0.01, 2)
    assert set(first) == set(names)  # each within one interval of its REGISTERED
    tenths = [sum(1 for at in first.values() if k / 10 < at <= (k + 1) / 10) for k in range(10)]
    assert all(6 <= count <= 14 for count in tenths), tenths  # about 10 each, not 100 at once
