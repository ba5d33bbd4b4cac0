"""tools/zmqmemory.py, briefly: a bare ROUTER's memory per connection grows as its pipes'
chunks are first filled and then stays, which is what docs/performance.md says bounds the
broker's memory per idle node. The figures themselves are the tool's to give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

TOOL = Path(__file__).resolve().parents[2] / "tools" / "zmqmemory.py"


def test_the_cost_of_a_connection_grows_with_its_first_messages_then_stays() -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--peers", "50", "--messages", "600", "--json", "--batch"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout)
    assert found["peers"] == 50
    assert set(found["batch_options"]) == {"IN_BATCH_SIZE", "OUT_BATCH_SIZE"}
    cost = {row["messages"]: row["kib_per_peer"] for row in found["rows"]}
    assert {1, 256, 512, 520, 600} <= set(cost)
    assert cost[600] - cost[1] > 16  # the chunks of both pipes, touched as they fill
    assert abs(cost[600] - cost[520]) < 4  # and then reused: no growth after
