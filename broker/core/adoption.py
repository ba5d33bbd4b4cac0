"""The restart hold: what a broker restarted from its store waits for before it places
again the tasks it restored.

When the broker went down, nodes may have been running those tasks' attempts; they keep
running them and, once they see the broker again, register anew and claim each attempt
they still have (REGISTER `attempts`, protocol.md 7.3). So the restored tasks wait (state
UNCLAIMED) until every node process that was registered has come back, or until the hold's
time is up; a claimed task is adopted by its node meanwhile, and only what no node claimed
is placed again. Tasks accepted meanwhile wait with them: one may be a resend of a task the
old broker had placed and not yet stored (its last few milliseconds), whose node is still to
claim it.

A claim can also come before its task: the old broker placed a task it had accepted in its
last milliseconds and never stored, and the node claims it before the client's resend
submits it again (or a task whose dependencies the old broker saw succeed). Such an early
claim is kept for the expiry: the task, once it comes, is adopted by the claiming node
instead of placed. Pure state: time comes in as `now`.
"""

from __future__ import annotations

from broker.core.nodes import Node
from broker.core.tasks import ProcessKey, Task
from broker.protocol import Claim, Result


class RestartHold:
    """The node processes still awaited and the restored tasks held for them."""

    __slots__ = ("arrived", "awaiting", "tasks", "timer", "until")

    def __init__(self, awaiting: set[ProcessKey], tasks: list[Task], until: float) -> None:
        self.awaiting = awaiting
        self.tasks = tasks  # some may have been adopted, answered or cancelled since
        self.arrived: list[Task] = []  # accepted during the hold; the same holds for them
        self.until = until
        self.timer = 0  # see broker.core.timers

    def back(self, process: ProcessKey) -> bool:
        """`process` registered again (or its replacement said it died): True once no
        process is awaited any more."""
        self.awaiting.discard(process)
        return not self.awaiting


class EarlyClaim:
    """A node's claim of an attempt of a task this broker does not have yet (or that waits
    for its dependencies), kept until the task comes or the time is up; the RESULT the
    node sends meanwhile is kept with it."""

    __slots__ = ("claim", "node", "result", "timer")

    def __init__(self, node: Node, claim: Claim) -> None:
        self.node = node
        self.claim = claim
        self.result: Result | None = None
        self.timer = 0  # see broker.core.timers
