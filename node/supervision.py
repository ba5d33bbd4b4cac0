"""What a supervised node process and its supervisor (node/supervisor.py) tell each other.

The child tells why it exits; the supervisor words the end of a child for the REGISTER
`replaces` of the child it starts in its place, and puts a spare child to work with an
assignment line on its stdin.

A child gets the write end of a pipe (`--report-fd`) and writes one short line to it just
before it exits on purpose: why it restarts, or why it cannot start at all. A child that
dies without writing (a crash, a signal) is described from its exit status alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal

from broker.protocol import Replaces

EXIT_RESTART = 75  # (EX_TEMPFAIL) "restart me now": a task passed its task timeout
SETUP_ERROR = 2  # the process cannot start as configured; restarting will not help
SETUP_FAILED = "cannot start: "  # how the report of a SETUP_ERROR begins
MAX_REPORT = 512  # bytes; below PIPE_BUF, so one write arrives whole


def report(fd: int | None, text: str) -> None:
    """Tell the supervisor why this process is about to exit (no-op when unsupervised)."""
    if fd is None:
        return
    data = text.encode("utf-8", "replace")[:MAX_REPORT]
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
        os.write(fd, data)


def read_report(fd: int) -> str:
    """What a child that has exited wrote to its report pipe ("" if nothing); closes `fd`."""
    try:
        if not select.select([fd], [], [], 0)[0]:
            return ""
        return os.read(fd, 4 * MAX_REPORT).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(returncode: int, reported: str = "") -> str:
    """How a child ended, for logs and REGISTER `replaces.reason`, e.g. "killed by signal 11
    (SIGSEGV)", "exited with status 3", or what the child reported."""
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal_name(-returncode)})"
    if reported:
        return reported
    if returncode == EXIT_RESTART:
        return f"exited with status {returncode} to be restarted"
    return f"exited with status {returncode}"


def encode_assignment(name: str, replaces: Replaces | None) -> bytes:
    """The line that puts a spare process (`znode --standby`) to work as node `name`."""
    gone = None if replaces is None else {"pid": replaces.pid, "reason": replaces.reason}
    return json.dumps({"name": name, "replaces": gone}).encode() + b"\n"


def decode_assignment(line: bytes) -> tuple[str, Replaces | None]:
    work = json.loads(line)
    gone = work["replaces"]
    return work["name"], None if gone is None else Replaces(gone["pid"], gone["reason"])


def is_setup_error(returncode: int, reported: str) -> bool:
    """Only a child that said so failed to start: `crash(2)` from a function also exits 2."""
    return returncode == SETUP_ERROR and reported.startswith(SETUP_FAILED)
