"""YoungTasks: the store's writer holds new tasks back from SQLite for a moment.

Most tasks are answered soon after they are accepted: in bulk work within the few tens of
milliseconds they wait in the queue and on a node, in a round trip within a millisecond. A
task written when accepted and deleted when answered costs SQLite three statements (its
INSERT, the UPDATE of its attempts, its DELETE) that leave nothing behind. So the writer
keeps each SaveTask, and the SaveAttempts that follow it, for up to `hold` seconds; a task
answered meanwhile reaches SQLite as its SaveTask and SaveAnswer in one batch, which
`NetChanges` reduces to the answer alone. A task still pending then is written as it stands.

What this changes for durability: a broker killed (even by `kill -9`) loses nothing more,
as its writer writes what it holds before it exits (broker.store.writer). A kill of both
processes, or of the machine, may also lose the tasks accepted in the last `hold` seconds
that were not answered: their clients' resends submit them again (protocol.md 5.2). A batch
marked `flush` (a client waiting for STATUS `stored`) writes every task held first.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.core.journal import Change, SaveAnswer, SaveAttempts, SaveTask

HOLD = 0.1  # seconds a new task may wait in the writer before SQLite has it


class YoungTasks:
    """The tasks held back, in the order they came. Times are the writer's monotonic
    clock."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self._held: dict[str, tuple[SaveTask, SaveAttempts | None, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def take(self, changes: Iterable[Change], now: float) -> list[Change]:
        """What of `changes` (the journal, in order) SQLite must write now, with the held
        tasks whose moment is over; new tasks are held (without a hold: none)."""
        if self.hold <= 0:
            return list(changes)
        held = self._held
        out: list[Change] = []
        for change in changes:
            if type(change) is SaveTask:
                task_id = change.spec.task_id
                held.pop(task_id, None)  # (never held: an id is saved again once answered)
                held[task_id] = (change, None, now)
            elif type(change) is SaveAttempts:
                young = held.get(change.task_id)
                if young is None:
                    out.append(change)
                else:
                    held[change.task_id] = (young[0], change, young[2])
            elif type(change) is SaveAnswer:
                young = held.pop(change.answer.task_id, None)
                if young is not None:  # saved and answered here: NetChanges cancels the row
                    out.append(young[0])
                out.append(change)
            else:
                out.append(change)
        return out + self.due(now)

    def due(self, now: float) -> list[Change]:
        """The held tasks accepted `hold` seconds ago or more, as SQLite must have them."""
        held, out, gone = self._held, list[Change](), []
        cutoff = now - self.hold
        for task_id, (save, attempts, since) in held.items():  # one scan: a dict's front
            if since > cutoff:  # holds the gaps of what left it, which each look would cross
                break
            gone.append(task_id)
            out.append(save)
            if attempts is not None:
                out.append(attempts)
        for task_id in gone:
            del held[task_id]
        return out

    def all(self) -> list[Change]:
        """Every task held, to be written now."""
        out: list[Change] = []
        for save, attempts, _ in self._held.values():
            out.append(save)
            if attempts is not None:
                out.append(attempts)
        self._held.clear()
        return out

    def next_due(self) -> float | None:
        """When the oldest held task must be written; None when none is held."""
        if not self._held:
            return None
        return next(iter(self._held.values()))[2] + self.hold
