"""The bare relay that `tools/bench.py compare` and `breakdown` measure ours against
(tools/compare.py), briefly: it answers REQ and pipelined DEALER clients with what they sent,
and leaves no process behind. How fast it is is the tool's to measure, not a test's."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import zmq

from broker.protocol.frames import recv_frames, send_frames
from tests.support import load_tool


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
