"""Fixtures shared by every tier, and the tier markers.

Each test is marked by the folder it lives in: `unit` (in process: no sockets, no child
processes; real files allowed), `integration` (real sockets on 127.0.0.1, in process or with
child processes) and `e2e` (the real commands as separate processes). `python3 tools/dev.py
test --fast` runs the unit tier.

ZeroMQ resources follow pyzmq's own tests: sockets made through the `make_socket` fixture are
closed with linger 0 at teardown, and the `context` is terminated within a deadline, so a
socket a test forgot fails that test instead of hanging the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support import Spawner

TIERS = ("unit", "integration", "e2e")
TERM_TIMEOUT = 10.0  # seconds a test's context may take to terminate


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def spawner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Spawner]:
    """Start real processes; all are reaped at teardown, and their logs shown on failure."""
    spawn = Spawner(tmp_path)
    try:
        yield spawn
    finally:
        spawn.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(spawn.logs())


def term_context(context: zmq.Context[Any], timeout: float = TERM_TIMEOUT) -> None:
    """Terminate `context`, failing (not hanging) if a socket of it is still open."""
    thread = threading.Thread(target=context.term, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"context could not terminate in {timeout} s: a socket is open")


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A fresh ZeroMQ context, terminated (within a deadline) after the test."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        term_context(ctx)


@pytest.fixture
def make_socket(context: zmq.Context[Any]) -> Iterator[Callable[[int], zmq.Socket[Any]]]:
    """`make_socket(kind)`: a socket of `context`, closed with linger 0 after the test."""
    made: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close(linger=0)
