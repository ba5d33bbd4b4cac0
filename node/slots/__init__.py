"""The slots of a node process: where its functions run. One interface, two kinds.

- `InlineSlot` (`--threads 1`, node/slots/inline.py): the socket thread runs the function
  itself (`run_next`), with no hand-off per task (the fastest path); a watchdog thread keeps
  the link alive meanwhile and ends the process when a task passes its task timeout.
- `ThreadSlots` (`--threads T`, T > 1, node/slots/threads.py): T slot threads beside the
  socket thread; their results come back through `take_results()` after `results_ready`.

Both hold the tasks sent beyond their slots (the prefetch window, protocol.md 5.5) and
start them in the order they came; `retract` gives back those not started, and `cancel` takes
the tasks of a STOP out of the slots (the agent answers them). The agent uses
either through `Slots` and never asks which kind it has; `open_slots` is the one place that
chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.protocol import Run
from node.registry import Function
from node.slots.cancelled import CancelledTasks
from node.slots.inline import InlineSlot
from node.slots.threads import ThreadSlots


class Slots(Protocol):
    """What the socket thread asks of its slots. Every method is called by the socket thread
    (by the inline watchdog only while it holds the socket), except `poke`."""

    @property
    def capacity(self) -> int:
        """Tasks run at once: the capacity the node registers."""
        ...

    @property
    def busy(self) -> int:
        """Tasks running or held, not counting those answered already."""
        ...

    @property
    def held(self) -> int:
        """Tasks held: not started yet."""
        ...

    def lend(self, task_id: str) -> bool:
        """The running task `task_id` waits for other tasks: run other tasks in its slot
        meanwhile (protocol.md 5.9); False if it does not run here."""
        ...

    def reclaim(self, task_id: str) -> bool:
        """The waiting task goes on: its slot is its own again once the task run in it ends;
        False if no slot was lent."""
        ...

    @property
    def notifies(self) -> bool:
        """Whether results come from other threads, announced through `results_ready`
        (then the agent must watch its wake-up socket beside the broker's)."""
        ...

    @property
    def runnable(self) -> bool:
        """Whether a held task waits for the socket thread to run it (`run_next`)."""
        ...

    @property
    def next_deadline(self) -> float:
        """When `expire` next has a task to give (monotonic seconds, or inf)."""
        ...

    def start(self) -> None: ...

    def submit(self, run: Run) -> None:
        """Take a task: start it in a free slot, or hold it behind those held already."""
        ...

    def run_next(self, flush_at: float) -> list[bytes]:
        """Run the oldest held task in the socket thread (only while `runnable`); its RESULT
        frames. `flush_at`: when results the caller holds back must leave, should the task
        run long."""
        ...

    def retract(self, task_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Give back the held tasks among `task_ids`: (returned, the others), each in the
        order asked. A returned task is forgotten here."""
        ...

    def cancel(self, task_ids: Sequence[str]) -> CancelledTasks:
        """Take the tasks among `task_ids` out: the held ones are forgotten, the running
        ones count as answered from now on (their functions still run). The caller answers
        every one of them."""
        ...

    def drop_held(self) -> int:
        """Forget every held task (the broker places them again); how many there were."""
        ...

    def started(self) -> list[Run]:
        """The tasks started and not answered yet: what a node registering again claims
        (protocol.md 7.3)."""
        ...

    def held_runs(self) -> list[Run]:
        """The tasks held, not started yet, oldest first (claimed too)."""
        ...

    def take_results(self) -> list[list[bytes]]:
        """The RESULT messages finished since the last call, after `results_ready`."""
        ...

    def expire(self, now: float) -> list[Run]:
        """The running tasks past their task timeout; they count as answered from now on
        (the caller answers them)."""
        ...

    def poke(self) -> None:
        """A stop was requested: act on it even while a function runs. Safe from a signal
        handler."""
        ...

    def close(self, wait: float) -> None:
        """Stop, waiting at most `wait` seconds for functions still running."""
        ...


@dataclass(frozen=True, slots=True)
class SlotHooks:
    """What the slots may ask of the agent, which owns the socket."""

    # From a slot thread: results are waiting in `take_results()`.
    results_ready: Callable[[], None]
    # From the inline watchdog, holding the socket while a function runs: send what waits,
    # read the broker, heartbeat or deregister as the loop would; when a heartbeat is due
    # next; and a task that passed its task timeout, which the function running inline
    # cannot be stopped for (ends the process).
    keep_alive: Callable[[], None]
    next_heartbeat: Callable[[], float]
    overdue: Callable[[Run], None]


def open_slots(functions: Mapping[str, Function], threads: int, hooks: SlotHooks) -> Slots:
    """`threads` slots for `functions`: one inline slot, or that many slot threads."""
    if threads == 1:
        return InlineSlot(
            functions, hooks.keep_alive, hooks.next_heartbeat, hooks.overdue, hooks.results_ready
        )
    return ThreadSlots(functions, threads, hooks.results_ready)
