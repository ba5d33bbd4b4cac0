"""tools/memory.py, briefly: it reports the core's bytes per entry of each kind, and larger
arguments cost more. The figures themselves are the tool's to give, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "memory.py"
KINDS = {"pending task", "kept answer", "failed task", "registered node"}


def run(*args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--count", "300", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures: dict[str, int] = json.loads(done.stdout)
    return figures


def test_every_kind_is_measured_and_arguments_count() -> None:
    small, large = run(), run("--args-bytes", "5000")
    assert set(small) == set(large) == KINDS
    assert all(each > 0 for each in small.values())
    for kind in ("pending task", "kept answer", "failed task"):
        assert large[kind] - small[kind] > 4000, kind  # the arguments are kept
