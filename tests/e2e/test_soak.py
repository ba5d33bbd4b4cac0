"""A two-minute run of tools/soak.py: mixed load (maps, futures and blocking calls with
priorities, tasks that raise, tasks that time out, zsubmit processes) while node processes
are SIGKILLed every 30 s and the broker once, half-way: nothing lost, nothing answered wrong,
nothing run more often than its answer's attempts, nothing run again because of the broker
kill. Run as a user runs the tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_tool

TOOL = Path(__file__).resolve().parents[2] / "tools" / "soak.py"
DURATION = 120  # seconds of load; the tool adds a few for starting and draining

# Every stream, and every kind of outcome the functions must give.
STREAMS = ["execute", "future", "map", "timeout", "zsubmit", "zsubmit map"]
OUTCOMES = ["soak_ok exit 0", "soak_raise exit 1", "soak_sleep exit 124"]


@pytest.mark.timeout(DURATION + 180)
def test_no_task_lost_wrong_or_run_beyond_its_attempts_under_mixed_load_and_kills() -> None:
    code, out, err = run_tool(
        TOOL,
        *("--duration", str(DURATION), "--node-kill-interval", "30", "--seed", "17"),
        *("--heartbeat-interval", "0.2", "--liveness", "3", "--timeout", "30", "--json"),
        timeout=DURATION + 150,
    )
    assert code in (0, 1), out + err  # 2: the run itself could not be carried out
    report: dict[str, Any] = json.loads(out)
    where = (report["samples"], report.get("dir"))
    assert (report["lost"], report["wrong"]) == (0, 0), where
    assert report["duplicated"] == 0, (report["duplicated_causes"], where)
    assert report["broker_kill_reruns"] == 0, where
    assert report["answered"] == report["tasks"] > 10_000, where
    assert report["executions"] >= report["tasks"] - report["never_executed"]

    # The kills happened: node processes at 15, 45, 75 and 105 s, the broker at 60 s while
    # tasks ran, and the nodes registered again with the broker that replaced it.
    assert report["node_kills"] >= 3 and report["broker_kills"] == 1, report["kills"]
    (broker,) = [k for k in report["kills"] if k["kind"] == "broker"]
    assert broker["running"] > 0 and broker["nodes_back"] is not None, broker

    # Every stream was answered, with every kind of outcome.
    streams = report["by_stream"]
    assert all(streams[s]["answered"] > 0 for s in STREAMS), streams
    outcomes = {o: sum(counts.get(o, 0) for counts in streams.values()) for o in OUTCOMES}
    assert all(outcomes.values()), outcomes

    # Measured: both brokers' and the supervisors' samples, latency, the store.
    labels = [p["label"] for p in report["processes"]["long_lived"]]
    assert labels.count("broker 1") == labels.count("broker 2") == 1, labels
    assert sum(label.startswith("znode ") for label in labels) == 3, labels
    assert report["latency"]["execute"]["last_quarter"]["n"] > 0, report["latency"]
    assert report["store"]["max"]["db_mb"] > 0, report["store"]

    assert report["broken"] == [] and code == 0, report["broken"]
