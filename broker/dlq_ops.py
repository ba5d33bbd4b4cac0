"""The broker's answers to DLQ requests (protocol.md 3.12, 3.13): list, show, replay, purge.

Pure: works on the scheduler's state; `now` comes in. Replayed tasks start again under their
own ids with a fresh count of attempts, and their old answer is forgotten, so that a resend
of the id waits for the new outcome instead of getting the old failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker import journal as j, protocol as p
from broker.deadletters import DeadLetter
from broker.queues import TaskRecord

if TYPE_CHECKING:
    from broker.scheduler import Scheduler, Send


def dead_letter_request(
    scheduler: Scheduler, msg: p.DeadLetters, now: float
) -> tuple[p.DeadLettersReply | p.Error, list[Send]]:
    """The reply to `msg`, and the RUNs a replay starts."""
    dead = scheduler.dead
    offset = scheduler.wall_offset
    if msg.op == p.DLQ_LIST:
        entries = [entry.view(offset) for entry in dead.newest(msg.limit)]
        return p.DeadLettersReply({"dead_letters": entries, "total": len(dead)}), []
    if msg.op == p.DLQ_SHOW:
        entry = dead.get(msg.task_id or "")
        if entry is None:
            return _not_found(msg.task_id), []
        return p.DeadLettersReply({"dead_letter": entry.view(offset)}, entry.payload), []
    if msg.op == p.DLQ_REPLAY:
        return _replay(scheduler, msg.task_id, now)
    return p.DeadLettersReply({"purged": _purge(scheduler, msg.task_id)}), []


def _not_found(task_id: str | None) -> p.Error:
    text = f"task {task_id!r} is not in the dead-letter queue (see `zbroker dlq list`)"
    return p.Error(p.ERR_NOT_FOUND, text, task_id)


def _replay(
    scheduler: Scheduler, task_id: str | None, now: float
) -> tuple[p.DeadLettersReply, list[Send]]:
    dead = scheduler.dead
    wanted = [task_id] if task_id is not None else [entry.task_id for entry in dead]
    replayed: list[str] = []
    missing: list[str] = []
    sends: list[Send] = []
    for tid in wanted:
        entry = dead.get(tid)
        if entry is None or tid in scheduler.tasks:
            missing.append(tid)  # not dead, or submitted again meanwhile
            continue
        dead.remove(tid)
        scheduler.results.forget(tid)
        if scheduler.config.journal:
            scheduler.journal += [j.DeadLetterRemoved(tid), j.ResultForgotten(tid)]
        scheduler.counters["replayed"] += 1
        sends += scheduler.admit(_revived(scheduler, entry, now), now)
        replayed.append(tid)
    return p.DeadLettersReply({"replayed": replayed, "missing": missing}), sends


def _revived(scheduler: Scheduler, entry: DeadLetter, now: float) -> TaskRecord:
    record = TaskRecord(
        entry.task_id,
        entry.function,
        entry.payload,
        entry.priority,
        scheduler.next_seq(),
        [],
        now,
    )
    record.retries = entry.retries
    record.timeout = entry.timeout
    return record


def _purge(scheduler: Scheduler, task_id: str | None) -> int:
    dead = scheduler.dead
    if task_id is None:
        count = dead.clear()
    elif dead.remove(task_id) is not None:
        count = 1
    else:
        count = 0
    if count and scheduler.config.journal:
        scheduler.journal.append(j.DeadLetterRemoved(task_id))
    scheduler.counters["purged"] += count
    return count
