"""CancelledTasks: what the slots did with the tasks of a STOP (protocol.md 3.20)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.protocol import Run


@dataclass(frozen=True, slots=True)
class CancelledTasks:
    """The tasks of a STOP that the slots had; the caller answers each of them (exit 130).

    Tasks the slots did not have (answered already, or never sent) are in neither list."""

    held: list[Run]  # dropped: they never start
    # Their functions still run; they count as answered from now on, and only ending the
    # process stops them.
    running: list[Run]
    # The socket thread is inside the function of one of `running`: the process must end
    # at once, as nothing else can run in it meanwhile.
    ends_process: bool = False
