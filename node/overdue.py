"""What a task past its task timeout (RUN `timeout_ms`) costs a node process.

A Python function cannot be stopped inside the process: the node answers the task with
exit 124 at its deadline, takes no new work (DEREGISTER), lets its other running tasks
finish for a while (lifecycle.RESTART_DRAIN), and exits EXIT_RESTART for its supervisor
(node/supervisor.py) to start a fresh process, whose REGISTER `replaces` names this one.
"""

from __future__ import annotations

import logging
import os
from typing import NoReturn

from broker.protocol import EXIT_TIMEOUT, ErrorInfo, Result, Run, encode
from node import supervision
from node.lifecycle import Lifecycle
from node.link import BrokerLink
from node.slots import Slots

log = logging.getLogger(__name__)


def seconds(value: float) -> str:
    """1.0 -> "1", 0.3 -> "0.3", as people write durations."""
    return f"{value:g}"


def overdue_result(run: Run) -> Result:
    """The RESULT for a task stopped at its deadline."""
    assert run.task_timeout is not None
    message = (
        f"{run.function}() exceeded its timeout of {seconds(run.task_timeout)} s "
        f"(attempt {run.attempt}); the node process was restarted to stop it"
    )
    return Result(run.task_id, EXIT_TIMEOUT, b"null", ErrorInfo("Timeout", message), run.attempt)


def restart_reason(run: Run) -> str:
    """Why the process restarts, as its successor's REGISTER `replaces.reason` says."""
    assert run.task_timeout is not None
    return f"stopped after task {run.task_id} exceeded its {seconds(run.task_timeout)} s timeout"


class OverdueTasks:
    """Answers the tasks past their task timeout and restarts the process for them.

    Part of the agent, used from its socket thread (or by the inline watchdog holding the
    socket). It sends on `link`, notes the restart in `life` (whose RESTART_DRAIN the
    agent's loop waits out), reads what still runs from `slots`, and tells the supervisor
    why the process ends on `report_fd`."""

    def __init__(
        self, link: BrokerLink, life: Lifecycle, slots: Slots, report_fd: int | None
    ) -> None:
        self._link = link
        self._life = life
        self._slots = slots
        self._report_fd = report_fd

    def expire(self, now: float) -> None:
        """Answer the tasks past their deadline; the process restarts after, at once if
        nothing else runs, else when the others have finished (or RESTART_DRAIN is up)."""
        late = self._slots.expire(now)
        if not late:
            return
        if self._slots.busy == 0 and not self._life.stopping:
            self.end_now(late)
        reason = restart_reason(late[0])
        if self._life.begin_restart(reason, now):
            log.warning("%s; this node process restarts once its other tasks finish", reason)
            self._link.deregister()  # before the RESULT 124 frees a slot: no new RUN for it
        for run in late:
            self._link.send_in_order(encode(overdue_result(run)))

    def end_now(self, late: list[Run]) -> NoReturn:
        """Answer the tasks past their deadline and end the process, nothing else running
        (or the socket thread inside the function of one of them).

        DEREGISTER first, so that the RESULT 124 freeing the slot brings no new RUN to a
        process about to end; the broker keeps the functions offered for a grace period
        (protocol.md 5.1), so tasks sent meanwhile wait for the successor."""
        self._life.restart_reason = reason = restart_reason(late[0])
        log.warning("%s; this node process restarts to stop it", reason)
        self._link.deregister()
        for run in late:
            self._link.send_in_order(encode(overdue_result(run)))
        self._exit(reason, unanswered=0)

    def exit_if_restarting(self) -> None:
        """At the end of a stopping process: exit EXIT_RESTART if it stops for a restart
        (an operator's stop wins), else return."""
        reason = self._life.restart_reason
        if reason is not None and self._life.restarting:
            self._exit(reason, unanswered=self._slots.busy)

    def _exit(self, reason: str, unanswered: int) -> NoReturn:
        """Tell the supervisor why, let the last messages leave, and exit EXIT_RESTART."""
        lost = unanswered + len(self._link.unsent)
        if lost:
            log.warning(
                "restarting with %d task(s) running or answered but not sent (not registered):"
                " the broker fails them when the next process registers",
                lost,
            )
        supervision.report(self._report_fd, reason)
        self._link.close(clean=True)  # returns once the RESULTs 124 and DEREGISTER have left
        logging.shutdown()
        os._exit(supervision.EXIT_RESTART)
