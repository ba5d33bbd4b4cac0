"""A function that crashes its process, for real: what the supervisor and the broker see
when a node process dies of a signal."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_segfault_really_kills_its_process_with_sigsegv() -> None:
    code = "from node.functions.util import segfault; segfault()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == -signal.SIGSEGV, done.stderr
