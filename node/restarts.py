"""Stopping a running function: what a task past its task timeout, or cancelled while it
runs, costs a node process.

A Python function cannot be stopped inside the process. The node answers the task at once
(exit 124 for a task timeout, protocol.md 5.3; exit 130 for a STOP, 3.20), takes no new work
(DEREGISTER), lets its other running tasks finish for a while (lifecycle.RESTART_DRAIN), and
exits EXIT_RESTART for its supervisor (node/supervisor.py) to start a fresh process, whose
REGISTER `replaces` names this one. The answer leaves before the process exits, and the
process hands it to its successor too (with every answer the broker has not confirmed as
stored), which claims and sends it: the broker never counts that task among those the
process crashed with, even when the answer was sent while the broker was away.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import NoReturn

from broker.protocol import EXIT_CANCELLED, EXIT_TIMEOUT, ErrorInfo, Result, Run, encode
from node import supervision
from node.lifecycle import Lifecycle
from node.link import BrokerLink
from node.slots import Slots
from node.slots.cancelled import CancelledTasks

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


def overdue_reason(run: Run) -> str:
    """Why the process restarts, as its successor's REGISTER `replaces.reason` says."""
    assert run.task_timeout is not None
    return f"stopped after task {run.task_id} exceeded its {seconds(run.task_timeout)} s timeout"


def cancelled_result(run: Run, started: bool) -> Result:
    """The RESULT for a task a STOP cancelled: held (not `started`) or running."""
    if started:
        what = "was cancelled by a client"
        how = "; the node process was restarted to stop it"
    else:
        what, how = "was cancelled before it started", ""
    message = f"{run.function}() {what} (attempt {run.attempt}){how}"
    return Result(
        run.task_id, EXIT_CANCELLED, b"null", ErrorInfo("Cancelled", message), run.attempt
    )


def cancelled_reason(run: Run) -> str:
    """Why the process restarts after a STOP for `run`, which it was running."""
    return f"stopped after task {run.task_id} was cancelled"


class Restarts:
    """Answers the running tasks the process cannot stop and restarts the process for them.

    Part of the agent, used from its socket thread (or by the inline watchdog holding the
    socket). It sends on `link`, notes the restart in `life` (whose RESTART_DRAIN the
    agent's loop waits out), reads what still runs from `slots`, and tells the supervisor
    why the process ends on `report_fd`."""

    def __init__(
        self,
        link: BrokerLink,
        life: Lifecycle,
        slots: Slots,
        report_fd: int | None,
        node: str | None = None,
    ) -> None:
        self._link = link
        self._life = life
        self._slots = slots
        self._report_fd = report_fd
        self._node = node  # this process's name, for the log

    def expire(self, now: float) -> None:
        """Answer the tasks past their deadline (exit 124) and restart the process."""
        late = self._slots.expire(now)
        if late:
            answers = [overdue_result(run) for run in late]
            self._restart(answers, overdue_reason(late[0]), late[0].task_id, now, at_once=False)

    def cancel(self, cancelled: CancelledTasks, now: float) -> None:
        """Answer the tasks a STOP cancelled (exit 130); restart the process if one of them
        was running."""
        answers = [cancelled_result(run, started=False) for run in cancelled.held]
        answers += [cancelled_result(run, started=True) for run in cancelled.running]
        if not cancelled.running:
            for answer in answers:
                self._link.send_in_order(encode(answer))
            return
        first = cancelled.running[0]
        reason = cancelled_reason(first)
        self._restart(answers, reason, first.task_id, now, at_once=cancelled.ends_process)

    def _restart(
        self, answers: Sequence[Result], reason: str, task_id: str, now: float, at_once: bool
    ) -> None:
        """Answer for tasks whose functions still run; the process restarts after, at once
        if `at_once` or nothing else runs, else when the others have finished (or
        RESTART_DRAIN is up). `task_id` is the task the restart is for."""
        if at_once or (self._slots.busy == 0 and not self._life.stopping):
            self.end_now(answers, reason, task_id)
        if self._life.begin_restart(reason, now):
            log.warning(
                "%s; this node process restarts once its other tasks finish",
                reason,
                extra={"task_id": task_id, "node": self._node},
            )
            self._link.deregister()  # before the answers free slots: no new RUN for them
        for answer in answers:
            self._link.send_in_order(encode(answer))

    def end_now(self, answers: Sequence[Result], reason: str, task_id: str) -> NoReturn:
        """Send `answers` (for tasks whose functions still run) and end the process, nothing
        else running (or the socket thread inside the function of one of them); `task_id`
        is the task the process ends for.

        DEREGISTER first, so that the answers freeing slots bring no new RUN to a process
        about to end; the broker keeps the functions offered for a grace period (protocol.md
        5.1), so tasks sent meanwhile wait for the successor."""
        self._life.restart_reason = reason
        log.warning(
            "%s; this node process restarts to stop it",
            reason,
            extra={"task_id": task_id, "node": self._node},
        )
        self._link.deregister()
        last = [encode(answer) for answer in answers]
        for frames in last:
            self._link.send_in_order(frames)
        self._exit(reason, unanswered=0, last=last)

    def exit_if_restarting(self) -> None:
        """At the end of a stopping process: exit EXIT_RESTART if it stops for a restart
        (an operator's stop wins), else return."""
        reason = self._life.restart_reason
        if reason is not None and self._life.restarting:
            self._exit(reason, unanswered=self._slots.busy)

    def _exit(self, reason: str, unanswered: int, last: Sequence[list[bytes]] = ()) -> NoReturn:
        """Tell the supervisor why, hand it the answers the broker may not have (`last`, the
        ones just sent, among them), let the last messages leave, and exit EXIT_RESTART."""
        if unanswered:
            log.warning(
                "restarting with %d task(s) running: the broker fails them when the next "
                "process registers",
                unanswered,
            )
        handover = self._link.unstored()
        handover += [frames for frames in last if frames not in handover]
        supervision.report(self._report_fd, reason, handover)
        self._link.close(clean=True)  # returns once the answers and DEREGISTER have left
        logging.shutdown()
        os._exit(supervision.EXIT_RESTART)
