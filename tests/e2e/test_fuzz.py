"""A shorter run of tools/fuzz.py: hostile input over real sockets to a live broker while
valid tasks are checked, run as a user runs the tool."""

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
    growth_mib = (report["broker_rss_kib_after"] - report["broker_rss_kib_before"]) / 1024
    assert growth_mib < 64, f"broker memory grew by {growth_mib:.0f} MiB"
