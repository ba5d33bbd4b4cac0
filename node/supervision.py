"""What a supervised node process and its supervisor (node/supervisor.py) tell each other.

The child tells why it exits; the supervisor words the end of a child for the REGISTER
`replaces` of the child it starts in its place, and puts a spare child to work with an
assignment line on its stdin.

A child gets the write end of a pipe (`--report-fd`) and writes one short line to it just
before it exits on purpose: why it restarts, or why it cannot start at all. A child that
dies without writing (a crash, a signal) is described from its exit status alone. After
that line, a child that restarts hands over the RESULTs the broker has not confirmed as
stored (protocol.md 3.22), its own last answers among them (a timeout's 124): a JSON line of
messages, each a list of base64 frames, at most MAX_HANDOVER bytes. Its successor claims
and sends them (protocol.md 7.4), so an answer given while the broker was away, or still on
its way on the old connection, is not lost with the process.

The child of an elastic supervisor (`znode --min/--max`) also gets a demand pipe
(`--demand-fd`), on which it tells what the supervisor scales on: one JSON line per report,
`{"registered": bool, "backlog": N or null, "busy": B, "results": R}`: whether it is
registered, the broker's latest backlog hint (protocol.md 3.4; null while unknown), the tasks
it runs or holds, and how many RESULT messages it has sent since it started (which grows
while it works, even when every task is over before a report could see it running). Each
line is a whole state: only the last one counts. A report leaves when the state changed, at
most once per DEMAND_GAP, never blocking (a full pipe drops it and the next change sends the
state again), so the task path pays nothing for it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import select
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from broker.protocol import Replaces

EXIT_RESTART = 75  # (EX_TEMPFAIL) "restart me now": a task passed its task timeout
SETUP_ERROR = 2  # the process cannot start as configured; restarting will not help
SETUP_FAILED = "cannot start: "  # how the report of a SETUP_ERROR begins
MAX_REPORT = 512  # bytes of the reason
# Bytes of the answers handed over; with the reason, less than a pipe's buffer (64 KiB on
# Linux), so the exiting child's write never waits for the supervisor.
MAX_HANDOVER = 48 * 1024
Message = list[bytes]  # the frames of one message, from the tag on


@dataclass(frozen=True)
class Report:
    """What a child that exited wrote on its report pipe."""

    reason: str = ""  # why it exited ("" if it did not say)
    answers: tuple[Message, ...] = ()  # RESULTs it hands over to its successor


def report(fd: int | None, text: str, answers: Sequence[Message] = ()) -> None:
    """Tell the supervisor why this process is about to exit, and hand over `answers` (as
    many as fit in MAX_HANDOVER, oldest first); a no-op when unsupervised."""
    if fd is None:
        return
    reason = text.replace("\n", " ").encode("utf-8", "replace")[:MAX_REPORT]
    data = reason.decode("utf-8", "ignore").encode()  # (not cut inside a character)
    handed = handover_line(answers)
    if handed:
        data += b"\n" + handed
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
        os.write(fd, data)


def handover_line(answers: Sequence[Message]) -> bytes:
    """`answers` as one JSON line, as many as fit in MAX_HANDOVER (b"" for none)."""
    kept: list[list[str]] = []
    size = 0
    for message in answers:
        frames = [base64.b64encode(frame).decode() for frame in message]
        size += sum(len(frame) + 4 for frame in frames) + 4
        if size > MAX_HANDOVER:
            break
        kept.append(frames)
    return json.dumps({"answers": kept}).encode() if kept else b""


def read_handover(line: bytes) -> tuple[Message, ...]:
    """The answers in a handover line; () if it is not one."""
    try:
        body = json.loads(line)
        return tuple([base64.b64decode(f) for f in m] for m in body["answers"])
    except (ValueError, TypeError, KeyError):
        return ()


def read_report(fd: int) -> Report:
    """What a child that has exited wrote to its report pipe (empty if nothing); closes
    `fd`."""
    chunks: list[bytes] = []
    try:
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    reason, _, rest = b"".join(chunks).partition(b"\n")
    return Report(reason.decode("utf-8", "replace").strip(), read_handover(rest))


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


@dataclass(frozen=True)
class Assignment:
    """What a spare process (`znode --standby`) is told when it is put to work."""

    name: str  # the node process it serves as
    replaces: Replaces | None = None  # the process it stands in for
    answers: tuple[Message, ...] = ()  # that process's RESULTs to claim and send


def encode_assignment(work: Assignment) -> bytes:
    """The line that puts a spare process to work."""
    gone = work.replaces
    body = {
        "name": work.name,
        "replaces": None if gone is None else {"pid": gone.pid, "reason": gone.reason},
    }
    line = json.dumps(body).encode() + b"\n"
    handed = handover_line(work.answers)
    return line + handed + b"\n" if handed else line


def decode_assignment(data: bytes) -> Assignment:
    """The assignment in what a spare read from its stdin (its first line, and the handover
    line after it, if any)."""
    first, _, rest = data.partition(b"\n")
    work = json.loads(first)
    gone = work["replaces"]
    replaces = None if gone is None else Replaces(gone["pid"], gone["reason"])
    return Assignment(work["name"], replaces, read_handover(rest.strip()) if rest else ())


def is_setup_error(returncode: int, reported: str) -> bool:
    """Only a child that said so failed to start: `crash(2)` from a function also exits 2."""
    return returncode == SETUP_ERROR and reported.startswith(SETUP_FAILED)


# ---------------------------------------------------------------------------- demand reports

DEMAND_GAP = 0.25  # seconds: the least time between two demand reports of one process
MAX_DEMAND_READ = 65536  # bytes read from a demand pipe at once


@dataclass(frozen=True)
class Demand:
    """What a node process last told its supervisor (see the module's docstring)."""

    registered: bool  # with the broker: it takes tasks
    backlog: int | None  # the broker's backlog hint for its functions; None: unknown
    busy: int  # tasks running or held
    results: int  # RESULT messages sent since it started


def encode_demand(demand: Demand) -> bytes:
    body = {
        "registered": demand.registered,
        "backlog": demand.backlog,
        "busy": demand.busy,
        "results": demand.results,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_demand(line: bytes) -> Demand | None:
    """The report in `line`; None if it is not one (which the supervisor skips)."""
    try:
        body = json.loads(line)
        registered, backlog = body["registered"], body["backlog"]
        busy, results = body["busy"], body["results"]
    except (ValueError, TypeError, KeyError):
        return None
    counts = (busy, results) if backlog is None else (backlog, busy, results)
    if type(registered) is not bool or not all(type(n) is int and n >= 0 for n in counts):
        return None
    return Demand(registered, backlog, busy, results)


class DemandReport:
    """The child's end of its demand pipe; a no-op without one (`fd` None). Used by one thread
    at a time (the node's socket thread, or the inline watchdog holding the socket)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        if fd is not None:
            os.set_blocking(fd, False)  # a report never holds up the node
        self._told: tuple[bool, int | None, int, int] | None = None
        self._told_at = -math.inf
        self.due = math.inf  # when a report held back by DEMAND_GAP is to leave

    def update(
        self, registered: bool, backlog: int | None, busy: int, results: int, now: float
    ) -> None:
        """Report this state if it changed and the last report is DEMAND_GAP old."""
        if self._fd is None:
            return
        state = (registered, backlog, busy, results)
        if state == self._told:
            self.due = math.inf
            return
        if now < self._told_at + DEMAND_GAP:
            self.due = self._told_at + DEMAND_GAP
            return
        self._told_at, self.due = now, math.inf
        try:
            os.write(self._fd, encode_demand(Demand(*state)))
        except OSError:  # full (the next change says it all again) or the supervisor is gone
            return
        self._told = state


class DemandReader:
    """The supervisor's end of a child's demand pipe (non-blocking)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.ended = False  # the child closed it: it exited
        self._partial = b""

    def read(self) -> Demand | None:
        """The latest whole report waiting in the pipe; None if there is none."""
        try:
            data = os.read(self.fd, MAX_DEMAND_READ)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.ended = True
            return None
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in reversed(lines):
            demand = decode_demand(line)
            if demand is not None:
                return demand
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
