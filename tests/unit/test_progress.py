"""The progress bar of many tasks (client/progress.py): drawn only on a terminal, with the
tasks done of the total, the failures, and a line said above it."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator

import pytest
from pytest import MonkeyPatch

from client.progress import Progress, shows_on, track
from tests.support import Terminal


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)


def test_nothing_is_drawn_where_it_is_not_a_terminal() -> None:
    stream = io.StringIO()
    assert not shows_on(stream)
    with Progress(3, "power", stream=stream) as progress:
        progress.advance()
        progress.advance(failed=True)
        assert not progress.shown
    assert (progress.done, progress.failed) == (2, 1)
    assert stream.getvalue() == ""


def test_a_terminal_gets_done_of_total_and_the_failures() -> None:
    stream = Terminal()
    assert shows_on(stream)
    with Progress(3, "power", stream=stream) as progress:
        assert progress.shown
        for failed in (False, True, False):
            progress.advance(failed)
    shown = plain(stream.getvalue())
    assert "power" in shown and "3/3" in shown and "1 failed" in shown


def test_an_unknown_total_shows_the_count() -> None:
    stream = Terminal()
    with Progress(None, stream=stream) as progress:
        progress.advance()
    assert "1/?" in plain(stream.getvalue())


def test_say_writes_a_line_with_or_without_the_bar() -> None:
    stream = io.StringIO()
    with Progress(None, stream=stream) as progress:
        progress.say("line 7: divide failed")
    assert stream.getvalue() == "line 7: divide failed\n"
    terminal = Terminal()
    with Progress(None, stream=terminal) as progress:
        progress.say("line 7: divide failed")
    assert "line 7: divide failed\n" in plain(terminal.getvalue())


def test_track_passes_results_on_and_counts_the_failures(monkeypatch: MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    results: list[object] = [1, ValueError("no"), 3]
    assert list(track(iter(results), 3, lambda r: isinstance(r, Exception), "f")) == results
    shown = plain(terminal.getvalue())
    assert "3/3" in shown and "1 failed" in shown


def test_track_lets_a_failure_through(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())

    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("broken")

    seen = []
    with pytest.raises(RuntimeError, match="broken"):
        for value in track(failing(), None, lambda r: False):
            seen.append(value)
    assert seen == [1]
