"""The bare relay that `tools/bench.py compare` and `breakdown` measure ours against
(tools/compare.py), briefly: it answers REQ and pipelined DEALER clients with what they sent,
and leaves no process behind. How fast it is is the tool's to measure, not a test's."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import zmq

from broker.protocol.frames import recv_frames, send_frames
from tests.support import TOOLS, load_tool, run_tool


def load_compare() -> ModuleType:
    """tools/compare.py."""
    return load_tool("compare", "bench_compare")


def test_relay_echoes_req_and_pipelined_clients_and_is_reaped() -> None:
    tool = load_compare()
    with tool.Relay(workers=2) as relay:  # forked before this test makes a context
        pids = list(relay.pids.values())
        assert len(pids) == 3
        context: zmq.Context[Any] = zmq.Context()
        try:
            req = tool.connected(context, zmq.REQ, relay.url)
            for _ in range(4):  # each worker in turn, twice
                send_frames(req, tool.RELAY_REQUEST)
                assert recv_frames(req) == tool.RELAY_REQUEST

            dealer = tool.connected(context, zmq.DEALER, relay.url)
            messages = tool.executes("smoke", 300)
            for message in messages:
                send_frames(dealer, message)
            echoed = [recv_frames(dealer) for _ in messages]
            assert sorted(echoed) == sorted(messages)

            rate = tool.pipelined(dealer, tool.executes("window", 500), 50, tool.one_reply)
            assert rate > 0
        finally:
            context.destroy(linger=0)
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids), "a helper was not reaped"


def test_breakdown_passes_broker_arguments_and_counts_switches_per_thread() -> None:
    """`tools/bench.py breakdown --store --broker-arg=...`, a few calls: the broker takes the
    argument (a bad one would stop it from starting), and each busy thread's line has its CPU
    and its context switches per round trip."""
    code, out, err = run_tool(
        TOOLS / "bench.py",
        "breakdown",
        "--runs=1",
        "--calls=400",  # enough for the broker's CPU to span several clock ticks
        "--store",
        "--broker-arg=--store-delay=0.1",
        timeout=120,
    )
    assert code == 0, err
    assert "ours: p50" in out and "context switches (voluntary, involuntary)" in out
    broker = [line.split() for line in out.splitlines() if line.startswith("  ours  broker")]
    assert broker and all(len(fields) == 6 for fields in broker)  # ours broker thread 3 figures
    assert all(float(fields[4]) > 0 for fields in broker)  # it waited for each message
