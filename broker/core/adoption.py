"""The restart hold: what a broker restarted from its store waits for before it places
again the tasks it restored.

When the broker went down, nodes may have been running those tasks' attempts; they keep
running them and, once they see the broker again, register anew and claim each attempt
they still have (REGISTER `attempts`, protocol.md 7.3). So the restored tasks wait (state
UNCLAIMED) until every node process that was registered has come back, or until the hold's
time is up; a claimed task is adopted by its node meanwhile, and only what no node claimed
is placed again. Pure state: time comes in as `now`.
"""

from __future__ import annotations

from broker.core.tasks import ProcessKey, Task


class RestartHold:
    """The node processes still awaited and the restored tasks held for them."""

    __slots__ = ("awaiting", "tasks", "timer", "until")

    def __init__(self, awaiting: set[ProcessKey], tasks: list[Task], until: float) -> None:
        self.awaiting = awaiting
        self.tasks = tasks  # some may have been adopted, answered or cancelled since
        self.until = until
        self.timer = 0  # see broker.core.timers

    def back(self, process: ProcessKey) -> bool:
        """`process` registered again (or its replacement said it died): True once no
        process is awaited any more."""
        self.awaiting.discard(process)
        return not self.awaiting
