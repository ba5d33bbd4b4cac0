from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Spawner


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
