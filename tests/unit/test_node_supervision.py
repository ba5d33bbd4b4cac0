"""What a node process tells its supervisor, how an exit is worded for REGISTER `replaces`,
how a spare is put to work, and when a dead node process is started again."""

from __future__ import annotations

import contextlib
import math
import os
import signal

import pytest

from broker.protocol import Replaces
from node import supervision
from node.supervisor import RESTART_BACKOFF_MAX, RESTART_BACKOFF_MIN, YOUNG, restart_delay


@pytest.mark.parametrize(
    ("returncode", "reported", "reason"),
    [
        (-signal.SIGSEGV, "", "killed by signal 11 (SIGSEGV)"),
        (-signal.SIGKILL, "ignored: a signal says it all", "killed by signal 9 (SIGKILL)"),
        (3, "", "exited with status 3"),
        (supervision.EXIT_RESTART, "stopped after task t exceeded its 1 s timeout", None),
        (supervision.EXIT_RESTART, "", "exited with status 75 to be restarted"),
        (-200, "", "killed by signal 200 (signal 200)"),
    ],
)
def test_describe_exit(returncode: int, reported: str, reason: str | None) -> None:
    assert supervision.describe_exit(returncode, reported) == (reason or reported)


def test_a_report_travels_through_the_pipe_once_the_writer_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    supervision.report(write_fd, "stopped after task t exceeded its 1 s timeout")
    os.close(write_fd)
    report = supervision.read_report(read_fd)
    assert report == supervision.Report("stopped after task t exceeded its 1 s timeout")
    with pytest.raises(OSError):
        os.fstat(read_fd)  # read_report closed it


def test_no_report_reads_as_empty_and_reporting_unsupervised_is_a_no_op() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    assert supervision.read_report(read_fd) == supervision.Report()  # nothing yet
    os.close(write_fd)
    supervision.report(None, "nobody listens")


def test_a_long_reason_is_cut_and_keeps_to_one_line() -> None:
    read_fd, write_fd = os.pipe()
    supervision.report(write_fd, "é" * 10_000)
    os.close(write_fd)
    assert supervision.read_report(read_fd).reason == "é" * (supervision.MAX_REPORT // 2)
    read_fd, write_fd = os.pipe()
    supervision.report(write_fd, "two\nlines")
    os.close(write_fd)
    assert supervision.read_report(read_fd) == supervision.Report("two lines")


def test_answers_handed_over_travel_after_the_reason_as_many_as_fit() -> None:
    """A restarting child hands its successor the RESULTs the broker may not have; what
    does not fit in MAX_HANDOVER (with the reason, less than a pipe holds) stays behind."""
    small = [b"ZTB1", b"RESULT", b'{"task_id":"t1","exit_code":124}', b"null"]
    large = [b"ZTB1", b"RESULT", b'{"task_id":"t2","exit_code":0}', b"\xff" * 40_000]
    read_fd, write_fd = os.pipe()
    supervision.report(write_fd, "stopped after task t1 exceeded", [small, large, small])
    os.close(write_fd)
    report = supervision.read_report(read_fd)
    assert report == supervision.Report("stopped after task t1 exceeded", (small,))


def test_only_a_reported_setup_error_stops_the_supervisor() -> None:
    failed = f"{supervision.SETUP_FAILED}no function set 'maht'"
    assert supervision.is_setup_error(supervision.SETUP_ERROR, failed)
    assert not supervision.is_setup_error(supervision.SETUP_ERROR, "")  # crash(2) from a function
    assert not supervision.is_setup_error(1, failed)


@pytest.mark.parametrize("replaces", [None, Replaces(42, "killed by signal 11 (SIGSEGV)")])
def test_assignment_round_trip(replaces: Replaces | None) -> None:
    work = supervision.Assignment("node-a.1", replaces)
    data = supervision.encode_assignment(work)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert supervision.decode_assignment(data) == work
    answers = ([b"ZTB1", b"RESULT", b"{}", b"\x00\n"],)  # any bytes, newlines among them
    work = supervision.Assignment("node-a.1", replaces, answers)
    data = supervision.encode_assignment(work)
    assert data.count(b"\n") == 2
    assert supervision.decode_assignment(data) == work


def test_restart_delay() -> None:
    # A timed-out process asked for it: at once, and a crash backoff in force is kept.
    assert restart_delay(supervision.EXIT_RESTART, 0.1, None) == (0.0, None)
    assert restart_delay(supervision.EXIT_RESTART, 0.1, 0.4) == (0.0, 0.4)
    # A young process that crashes: at once the first time, then ever more slowly.
    delays, backoff = [], None
    for _ in range(8):
        delay, backoff = restart_delay(3, YOUNG / 2, backoff)
        delays.append(delay)
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, RESTART_BACKOFF_MAX]
    assert delays[1] == RESTART_BACKOFF_MIN
    # One that ran a while is restarted at once and its backoff forgotten.
    assert restart_delay(-signal.SIGSEGV, YOUNG + 1, 3.2) == (0.0, None)


# ---------------------------------------------------------------------------- demand reports


def _pipe() -> tuple[supervision.DemandReader, supervision.DemandReport, int]:
    read_fd, write_fd = os.pipe()
    return supervision.DemandReader(read_fd), supervision.DemandReport(write_fd), write_fd


def test_a_demand_report_travels_as_one_json_line() -> None:
    demand = supervision.Demand(True, 17, 1, 42)
    line = supervision.encode_demand(demand)
    assert line == b'{"registered":true,"backlog":17,"busy":1,"results":42}\n'
    assert supervision.decode_demand(line) == demand
    unknown = b'{"registered":false,"backlog":null,"busy":0,"results":0}'
    assert supervision.decode_demand(unknown) == supervision.Demand(False, None, 0, 0)


@pytest.mark.parametrize(
    "line",
    [b"", b"{", b"[]", b'{"registered":true,"busy":0,"results":0}',
     b'{"registered":true,"backlog":-1,"busy":0,"results":0}',
     b'{"registered":true,"backlog":1,"busy":true,"results":0}',
     b'{"registered":true,"backlog":1,"busy":0,"results":1.5}',
     b'{"registered":1,"backlog":1,"busy":0,"results":1}',
     b'{"backlog":1,"busy":0,"results":1}',
     b"stopped after task t exceeded its 1 s timeout"],
)  # fmt: skip
def test_what_is_not_a_demand_report_is_skipped(line: bytes) -> None:
    assert supervision.decode_demand(line) is None


def test_a_process_reports_changes_at_most_once_per_gap_and_the_last_one_counts() -> None:
    reader, report, write_fd = _pipe()
    gap = supervision.DEMAND_GAP
    try:
        assert reader.read() is None  # nothing yet
        report.update(False, None, 0, 0, 10.0)
        assert reader.read() == supervision.Demand(False, None, 0, 0)
        report.update(False, None, 0, 0, 20.0)  # no change: nothing sent
        assert reader.read() is None and report.due == math.inf
        report.update(True, 5, 1, 0, 20.0)
        report.update(True, 4, 1, 3, 20.0 + gap / 2)  # too soon: held until the gap is over
        assert report.due == 20.0 + gap
        assert reader.read() == supervision.Demand(True, 5, 1, 0)
        report.update(True, 3, 1, 4, 20.0 + gap)  # the state then, not each step in between
        report.update(True, 2, 0, 5, 30.0)
        assert reader.read() == supervision.Demand(True, 2, 0, 5)  # the latest of two lines
        assert report.due == math.inf
    finally:
        os.close(write_fd)
    assert reader.read() is None and reader.ended  # the process is gone
    reader.close()


def test_a_report_that_finds_the_pipe_full_is_sent_again_later() -> None:
    reader, report, write_fd = _pipe()
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write_fd, b"\n" * 4096)  # the report's end is non-blocking
        report.update(True, 7, 1, 1, 0.0)  # dropped: the pipe is full, and nothing blocks
        data = b""
        with contextlib.suppress(BlockingIOError):
            while True:
                data += os.read(reader.fd, 65536)  # the supervisor reads it all away
        assert data.strip() == b""  # the report was dropped, not waited for
        report.update(True, 7, 1, 1, supervision.DEMAND_GAP)  # not told yet: it goes now
        assert reader.read() == supervision.Demand(True, 7, 1, 1)
    finally:
        os.close(write_fd)
        reader.close()


def test_an_unsupervised_process_reports_nothing() -> None:
    report = supervision.DemandReport(None)
    report.update(True, 3, 1, 1, 0.0)
    assert report.due == math.inf
