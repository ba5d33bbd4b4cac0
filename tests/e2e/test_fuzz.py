"""A shorter run of tools/fuzz.py: hostile input over real sockets to a live broker while
valid tasks are checked, run as a user runs the tool. Among the input: forged RESULTs for the
task a valid client waits for, which the broker must refuse without changing its answer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz.py"


def test_broker_survives_hostile_input_and_keeps_serving() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--messages",
            "3000",
            "--flood",
            "10000",
            "--seconds",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["broker_alive"]
    assert report["valid_tasks_wrong"] == []
    assert report["valid_tasks_ok"] > 0
    counters = report["counters"]
    assert counters["refused_malformed"] > 0 and counters["refused_unknown_command"] > 0
    assert counters["refused_unsupported_version"] > 0
    # Every forged RESULT of the registered forger got ERROR not_holder, and the broker
    # counted those and the unregistered peers' forgeries; no valid answer changed (above).
    forged = report["forged_results_sent"]
    assert forged > 0 and report["forged_results_refused"] == forged
    assert report["forger_other_answers"] == []
    assert counters["refused_not_holder"] >= forged
    growth_mib = (report["broker_rss_kib_after"] - report["broker_rss_kib_before"]) / 1024
    assert growth_mib < 64, f"broker memory grew by {growth_mib:.0f} MiB"
