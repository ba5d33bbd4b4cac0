"""When a silent node is dead: judged by what arrived, not by when the broker read it.

A node is dead after interval x liveness of silence (protocol.md 7.2). The broker hears a
node when it reads the node's message, so two kinds of slowness of its own would pass for
the node's silence, and would declare live nodes dead (and run their tasks again):

- **Input waiting unread.** After a busy moment thousands of heartbeats may wait at the
  socket while a liveness check comes due. The shell says at each tick whether input waits
  (`unread`); a node found silent then is judged again once it has been read, for up to one
  more expiry (a broker that never catches up still finds its dead nodes).
- **A stall of the loop** (SIGSTOP, a busy host, a slow disk, a long collection): the
  broker's own timers run late by about as long, and the nodes' heartbeats of that time
  reach it only afterwards. The shell, which owns the clock, measures the lateness
  (LoopClock); one over STALL_MIN is a stall: it is logged and counted, and the silence
  of every node is reduced by the stalls that ended after it was last heard (Lifeguard's
  local health awareness: a member that is slow itself is slower to accuse). A node that
  really died is found one expiry after its last sign of life, not counting the broker's
  stalls: at most one expiry after the broker is back.

Pure: time comes in as `now`. O(1) per tick, and per check O(the stalls since the node was
last heard), of which at most KEPT_STALLS are kept.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from broker.protocol import STALL_MIN

log = logging.getLogger("broker.core")

# How soon a death check put off for unread input comes again: the shell reads a batch of
# messages between two ticks.
UNREAD_RECHECK = 0.01
KEPT_STALLS = 64  # the latest stalls; older ones are forgotten first


class LoopClock:
    """For the shell, which owns the clock: how late its loop ran the core's timers, as a
    stall of the loop (0.0 below STALL_MIN). The core's own clock is whatever `now` it is
    given (a test may jump it), so the stall is measured here and given to `tick`."""

    def __init__(self) -> None:
        self._ticked = -math.inf  # when the last tick ran: lateness before it is counted

    def stall(self, due: float, now: float) -> float:
        """Seconds of stall shown by a tick at `now` of timers due at `due` (the core's
        `next_deadline()`; -inf, deferred work, shows nothing)."""
        ticked, self._ticked = self._ticked, now
        if due == -math.inf:
            return 0.0
        late = now - max(due, ticked)
        return late if late >= STALL_MIN else 0.0


class Liveness:
    def __init__(self) -> None:
        # (ended at, seconds) of the latest stalls, oldest first.
        self._stalls: deque[tuple[float, float]] = deque(maxlen=KEPT_STALLS)
        self.unread = False  # the shell has input waiting unread (said at each tick)

    def tick(self, now: float, unread: bool, stall: float) -> None:
        """A tick at `now`: whether input waits unread, and the stall of the loop that
        just ended (0.0: none, see LoopClock)."""
        self.unread = unread
        if stall > 0.0:
            self._stalls.append((now, stall))
            log.warning(
                "the broker's loop stalled for %.2f s (its timers ran late): the nodes' "
                "silence during it is not held against them",
                stall,
            )

    def silence(self, last_seen: float, now: float) -> float:
        """Seconds a node last heard at `last_seen` has been silent at `now`, less the
        stalls of the broker's loop since."""
        silent = now - last_seen
        for ended, seconds in reversed(self._stalls):
            if ended <= last_seen:
                break
            silent -= min(seconds, ended - last_seen)
        return silent

    def dead(self, last_seen: float, now: float, expiry: float) -> float | None:
        """None if a node last heard at `last_seen` is dead at `now` (silent for `expiry`);
        else when to look again (its silence is short of the expiry, or input waits unread
        that may be its)."""
        silent = self.silence(last_seen, now)
        if silent < expiry:
            return now + (expiry - silent)
        if self.unread and silent < 2 * expiry:
            return now + UNREAD_RECHECK
        return None
