"""`Client.map(progress=True)` / `imap`: the progress bar on stderr when it is a terminal,
nothing when it is not; and `imap(answers=True)`, the whole answers in input order."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest import CaptureFixture, MonkeyPatch

from broker.protocol import TaskCompleted, loads_payload
from client import Client
from tests.fakes import FakeBroker, StartBroker, serve_functions
from tests.support import Terminal

FUNCTIONS: dict[str, Callable[..., Any]] = {"divide": lambda a, b: a / b}


@pytest.fixture
def broker(fake_broker: StartBroker) -> FakeBroker:
    return fake_broker(serve_functions(FUNCTIONS))


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)


def test_map_shows_done_of_total_and_failures_on_a_terminal(
    broker: FakeBroker, monkeypatch: MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Client(broker.url) as client:
        pairs = [(1, 2), (1, 0), (3, 4), (8, 2)]
        results = client.map("divide", pairs, progress=True, return_exceptions=True)
    assert [r for r in results if not isinstance(r, Exception)] == [0.5, 0.75, 4.0]
    shown = plain(terminal.getvalue())
    assert "4/4" in shown and "1 failed" in shown


def test_imap_of_a_generator_shows_the_count(broker: FakeBroker, monkeypatch: MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    def pairs() -> Iterator[tuple[int, int]]:
        yield from ((n, 1) for n in range(5))

    with Client(broker.url) as client:
        assert list(client.imap("divide", pairs(), progress=True)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert "5/?" in plain(terminal.getvalue())


def test_no_bar_where_stderr_is_not_a_terminal(
    broker: FakeBroker, capsys: CaptureFixture[str]
) -> None:
    with Client(broker.url) as client:
        assert client.map("divide", [(1, 2)], progress=True) == [0.5]
    assert capsys.readouterr().err == ""


def test_imap_answers_gives_every_task_completed_in_order(broker: FakeBroker) -> None:
    with Client(broker.url) as client:
        answers = list(client.imap("divide", [(1, 2), (1, 0), (9, 3)], answers=True))
    assert all(isinstance(answer, TaskCompleted) for answer in answers)
    assert [answer.exit_code for answer in answers] == [0, 1, 0]
    assert [loads_payload(answers[i].result) for i in (0, 2)] == [0.5, 3.0]
    assert answers[1].error is not None and answers[1].error.type == "ZeroDivisionError"
    sent = [execute.spec.task_id for _, execute in broker.executes()]
    assert [answer.task_id for answer in answers] == sent
