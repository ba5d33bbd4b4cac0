"""What a task past its timeout costs a node process.

A function cannot be stopped inside the process: the agent answers the task with exit 124,
stops taking work and exits EXIT_RESTART for its supervisor to start a fresh process
(node/supervisor.py), which registers with `replaces` naming this one. Mixed into
`node.agent.NodeAgent`, which owns the socket, the slots and the lifecycle.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NoReturn

from broker.protocol import Run, encode
from node import restart
from node.config import NodeConfig
from node.executor import ThreadSlots
from node.inline import InlineSlot
from node.lifecycle import Lifecycle
from node.link import BrokerLink
from node.timeouts import restart_reason, timeout_result

log = logging.getLogger(__name__)


class TimeoutRestarts:
    """The agent's timeout handling; the attributes are the agent's."""

    _config: NodeConfig
    _context: Any  # the agent's zmq.Context
    _link: BrokerLink
    _life: Lifecycle
    _pool: InlineSlot | ThreadSlots
    _deregistered: bool

    def _deregister(self) -> None:
        raise NotImplementedError  # the agent's

    def _on_inline_timeout(self, run: Run) -> NoReturn:
        """Called by the InlineSlot watchdog, holding the socket, at a task's deadline: the
        function cannot be stopped, so answer for it and end the process."""
        self._restart_now([run])

    def _expire(self, now: float) -> None:
        """Answer the slot-thread tasks past their deadline; the process restarts after,
        at once if nothing else runs (as InlineSlot does), else when the others finish."""
        assert isinstance(self._pool, ThreadSlots)
        late = self._pool.expire(now)
        if not late:
            return
        if self._pool.busy == 0 and not self._life.stopping:
            self._restart_now(late)
        self._begin_restart(restart_reason(late[0]), now)
        for run in late:
            self._link.send_result(encode(timeout_result(run)))

    def _restart_now(self, late: list[Run]) -> NoReturn:
        """Answer the tasks past their deadline and end the process, nothing else running.

        DEREGISTER first, so that the RESULT 124 freeing the slot brings no new RUN to a
        process about to end; the broker keeps the functions offered for a grace period
        (protocol.md 5.1), so tasks sent meanwhile wait for the successor."""
        self._life.restart_reason = reason = restart_reason(late[0])
        log.warning("%s; this node process restarts to stop it", reason)
        if self._link.registered and not self._deregistered:
            self._deregister()
        for run in late:
            self._link.send_result(encode(timeout_result(run)))
        self._exit_for_restart(reason, unanswered=0)

    def _begin_restart(self, reason: str, now: float) -> None:
        """Take no new work (DEREGISTER, before the RESULT 124 frees a slot) and let the
        running tasks finish for a while (lifecycle.RESTART_DRAIN)."""
        if not self._life.begin_restart(reason, now):
            return
        log.warning("%s; this node process restarts once its other tasks finish", reason)
        if self._link.registered and not self._deregistered:
            self._deregister()

    def _exit_for_restart(self, reason: str, unanswered: int) -> NoReturn:
        """Tell the supervisor why, let the last messages leave, and exit EXIT_RESTART.

        ZeroMQ sends in the background: a socket closed with a linger and a terminated
        context make sure the RESULT 124 and DEREGISTER reach the broker before the exit."""
        lost = unanswered + len(self._link.unsent)
        if lost:
            log.warning(
                "restarting with %d task(s) running or answered but not sent (not registered):"
                " the broker fails them when the next process registers",
                lost,
            )
        restart.report(self._config.report_fd, reason)
        self._link.close(clean=True)
        self._context.term()
        logging.shutdown()
        os._exit(restart.EXIT_RESTART)
