"""The heartbeat interval, grown with the node count so that heartbeats cost the broker a
bounded share of its loop (protocol.md 7.1).

Each registered node and the broker exchange about one HEARTBEAT each way per interval when
nothing else passes between them: at a fixed interval that work grows with the nodes (tens
of microseconds a node, each way), and at ten thousand nodes a 1 s interval would take a
large share of a core for nothing but signs of life. With a budget of B node heartbeats a
second the interval is the configured one (the least) or N / B, whichever is longer, taken
in steps of STEP so that a storm of registrations changes it a few times, not at each; it
shrinks again only once the nodes have halved. The expiry (interval x liveness) follows.

A node that registered `adopts_interval` is told a new interval in the broker's next
HEARTBEAT to it, and from then on is judged by it; while it may not have heard yet (one
expiry of the longer interval), it is judged by the longer of the two. A node that did not
register it keeps the interval its REGISTERED announced, both ways.

Pure: O(1) per change of the node count.
"""

from __future__ import annotations

import math

STEP = 1.25  # an interval is the least one times a power of STEP


class HeartbeatInterval:
    def __init__(self, least: float, budget: int | None) -> None:
        self.least = least
        self.budget = budget
        self.current = least  # the interval new registrations are told

    def resize(self, nodes: int) -> bool:
        """The node count is now `nodes`: whether the interval changed."""
        if self.budget is None:
            return False
        wanted = max(self.least, nodes / self.budget)
        current = self.current
        if current >= wanted and wanted * 2 > current:
            return False  # enough, and not twice enough
        steps = math.ceil(math.log(wanted / self.least, STEP) - 1e-9) if wanted > self.least else 0
        self.current = round(self.least * STEP**steps, 3)
        return self.current != current


def judged_interval(
    told: float, before: float, changed_at: float, liveness: int, now: float
) -> float:
    """The interval a node is judged by at `now`: the one it was `told`, or while it may
    still keep the one it had `before` (told at `changed_at`), the longer of the two."""
    if now < changed_at + before * liveness:
        return max(told, before)
    return told
