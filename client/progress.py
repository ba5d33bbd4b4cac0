"""The progress bar of many tasks, for `Client.map(progress=True)` / `imap` and `zsubmit map`:
tasks done (of how many, when known), their rate, the time left and the failures so far, on
stderr, and only when stderr is a terminal; a redirected stderr gets nothing.

rich is imported only when a bar is shown, so that `import client` stays light.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

REFRESH = 0.1  # seconds between updates of the bar: counting a task costs a comparison


class Progress:
    """Counts finished tasks (`advance`) and shows them while open. `total`: how many there
    are, None when unknown (the bar then shows the count and rate without an end).
    `stream`: stderr by default; `enabled`: None shows the bar only when `stream` is a
    terminal. Closing it (or leaving its `with` block) draws the final counts."""

    def __init__(
        self,
        total: int | None,
        description: str = "tasks",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = sys.stderr if stream is None else stream
        shown = shows_on(self._stream) if enabled is None else enabled
        self._bar = _Bar(total, description, self._stream) if shown else None
        self._next_refresh = 0.0

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def advance(self, failed: bool = False) -> None:
        """One more task finished (`failed`: without success)."""
        self.done += 1
        self.failed += failed
        if self._bar is not None:
            now = time.monotonic()
            if now >= self._next_refresh:
                self._next_refresh = now + REFRESH
                self._bar.show(self.done, self.failed)

    def say(self, message: str) -> None:
        """Write a line on the bar's stream, above the bar while it is shown."""
        if self._bar is not None:
            self._bar.say(message)
        else:
            self._stream.write(message + "\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.show(self.done, self.failed)
            self._bar.stop()
            self._bar = None


def track(
    results: Iterator[T],
    total: int | None,
    failed: Callable[[T], bool],
    description: str = "tasks",
) -> Iterator[T]:
    """`results` as they come, counted on a Progress (shown only on a terminal); `failed`
    tells which results are failures. The bar closes when the results end, raise, or are
    dropped."""
    with Progress(total, description) as progress:
        for result in results:
            progress.advance(failed(result))
            yield result


def shows_on(stream: TextIO) -> bool:
    """Whether a Progress shows its bar on `stream`: whether it is a terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _Bar:
    """The rich progress bar itself."""

    def __init__(self, total: int | None, description: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress as RichProgress,
            ProgressColumn,
            Task,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Task) -> Text:
                speed = task.speed
                return Text("" if speed is None else f"{speed:,.0f}/s", style="cyan")

        class Failures(ProgressColumn):
            def render(self, task: Task) -> Text:
                failed = int(task.fields.get("failed", 0))
                return Text(f"{failed:,} failed", style="red" if failed else "dim")

        self._console = Console(file=stream, markup=False, highlight=False, emoji=False)
        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            Failures(),
            console=self._console,
            redirect_stdout=False,  # results go to the real stdout, not above the bar
            redirect_stderr=False,
            transient=False,
        )
        self._task: Any = self._progress.add_task(description, total=total, failed=0)
        self._progress.start()

    def show(self, done: int, failed: int) -> None:
        self._progress.update(self._task, completed=done, failed=failed)

    def say(self, message: str) -> None:
        self._console.print(message, soft_wrap=True)

    def stop(self) -> None:
        self._progress.stop()
