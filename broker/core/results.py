"""ResultCache: answers of recently finished tasks, so a resend is answered, not run again.

A client that lost a TASK_COMPLETED resends the same EXECUTE (Lazy Pirate); if the task has
finished meanwhile, the broker answers from here. Each answer keeps the spec it answered (a
reference, not a copy: its arguments count in `max_bytes`), so that the same id sent with
another function or other arguments is refused (protocol.md 6) rather than answered;
answers restored from the store have none and are not compared. Entries live `ttl` seconds,
and the cache holds at most `max_entries` answers and `max_bytes` of results and arguments;
past either bound the oldest go first. Pure state: time comes in as `now`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from broker.core.config import ResultsConfig
from broker.protocol import TaskCompleted, TaskSpec

# Bytes an entry costs besides its payloads: its answer, its record and the spec it keeps
# (with a 32-character id), as tracemalloc measures them: about 250 and 300.
ENTRY_OVERHEAD = 550

Entry = tuple[TaskCompleted, float, TaskSpec | None]  # answer, when kept, what it answered


def conflicting(known: TaskSpec | None, spec: TaskSpec) -> TaskSpec | None:
    """`known`, the spec a task id stands for (None: not known), when `spec` asks something
    else under that id: another function or other arguments (protocol.md 6)."""
    if known is None or (known.function == spec.function and known.args == spec.args):
        return None
    return known


class ResultCache:
    def __init__(self, config: ResultsConfig | None = None) -> None:
        self.config = config or ResultsConfig()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0  # result and argument bytes held, plus ENTRY_OVERHEAD per entry
        # The entry of a task id, or None: `get` as the dict's own method (a C call), for
        # the scheduler's per-task path.
        self.find: Callable[[str], Entry | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def get(self, task_id: str) -> TaskCompleted | None:
        entry = self._entries.get(task_id)
        return None if entry is None else entry[0]

    def add(self, answer: TaskCompleted, now: float, spec: TaskSpec | None = None) -> None:
        config, entries = self.config, self._entries
        if config.ttl <= 0 or config.max_entries <= 0:
            return
        if answer.task_id in entries:
            self._drop(answer.task_id)
        entry = (answer, now, spec)
        entries[answer.task_id] = entry
        self.bytes += _cost(entry)
        while entries and (len(entries) > config.max_entries or self.bytes > config.max_bytes):
            self._pop_oldest()

    def forget(self, task_id: str) -> None:
        """Drop one answer (a replayed task will have a new one)."""
        self._drop(task_id)

    def next_expiry(self) -> float | None:
        """When the oldest answer expires; None when none is kept."""
        if not self._entries:
            return None
        _, (_, added, _) = next(iter(self._entries.items()))
        return added + self.config.ttl

    def expire(self, now: float, limit: int) -> None:
        """Forget answers older than the TTL, at most `limit` of them (entries are in the
        order they were added)."""
        cutoff = now - self.config.ttl
        for _ in range(limit):
            if not self._entries:
                return
            _, (_, added, _) = next(iter(self._entries.items()))
            if added > cutoff:
                return
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self.bytes -= _cost(entry)

    def _drop(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            self.bytes -= _cost(entry)

    def check_invariants(self) -> None:
        assert self.bytes == sum(map(_cost, self._entries.values())), "bytes drifted"
        assert len(self._entries) <= max(self.config.max_entries, 0)
        times = [e[1] for e in self._entries.values()]
        assert times == sorted(times), "entries out of order"


def _cost(entry: Entry) -> int:
    spec = entry[2]
    return len(entry[0].result) + ENTRY_OVERHEAD + (0 if spec is None else len(spec.args))
