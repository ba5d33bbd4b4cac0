"""A shorter run of tools/chaos.py: tasks keep flowing while node processes, whole znodes and
once the broker are SIGKILLed; none may be lost, failed or wrong, and no task may run more
often than the tasks in flight at the kills explain (at the broker kill: those started and
still pending in its store). Run as a user runs the tool."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_tool

TOOL = Path(__file__).resolve().parents[2] / "tools" / "chaos.py"


def test_no_task_lost_failed_or_wrong_while_nodes_and_the_broker_are_killed() -> None:
    # 4 one-slot processes x 20 ms per task: about 8 s of work, so node kills every 1-2 s
    # land mid-run, and the broker's at half-way.
    code, out, err = run_tool(
        TOOL,
        *("--tasks", "1500", "--nodes", "2", "--delay", "0.02", "--kill-interval", "1", "2"),
        *("--seed", "3", "--timeout", "30", "--json"),
        timeout=100,
    )
    assert code in (0, 1), out + err  # 2: the run itself could not be carried out
    report = json.loads(out)
    promises = (report["lost"], report["failed"], report["wrong"])
    assert promises == (0, 0, 0), (report["failures"], report["samples"], report.get("dir"))
    assert report["ok"] == report["tasks"] == 1500
    assert report["executions"] == report["tasks"] + report["duplicates"]
    assert report["duplicates"] <= report["in_flight_at_kills"], (report["kills"], report["dir"])
    assert report["node_kills"] >= 2 and report["broker_kills"] == 1, report["kills"]
    # The broker kill's bound: tasks started and still pending in its store, read after it.
    (broker,) = [k for k in report["kills"] if k["kind"] == "broker"]
    assert broker["running"] is not None and broker["pending_in_store"] > 0, broker
    assert broker["in_flight"] <= broker["pending_in_store"], broker
    assert broker["duplicates"] <= broker["in_flight"] and broker["not_pending"] == 0, broker
    assert report["broken"] == [] and code == 0
