"""NodePool: the registered nodes, their slots, and which node takes the next task.

A node takes tasks up to its window: `capacity` slots, plus up to `prefetch` tasks it holds
unstarted (protocol.md 5.5): as many as make about HELD_WORK seconds of work at its recent
run time per task, at least one, so that short tasks stream and few long ones wait behind
each other. A node runs what it holds in the order it got it, starting one
whenever a slot frees, so the pool knows which tasks have started without being told: the
oldest `capacity` (`Node.held` lists the others, oldest first). Tasks asked back (RETRACT)
wait in `Node.retracting` for the node's answer.

A node is picked for a task either from a per-function ready ring (round robin) or by least
load (active tasks per unit of capacity). Nodes that registered the same set of functions
form a group. A group of more than SCAN_MAX nodes keeps a least-loaded heap, so a load change
costs one push whatever the number of functions, and picking for a function looks at the top
of one heap per distinct set that offers it; heap entries are invalidated lazily by a
per-node version number. A smaller group is searched at each pick instead, which costs less
than the two pushes per task a heap takes.

Pure state: no sockets, no clock. Time comes in as `now`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count

from broker.core.config import LEAST_LOADED, ROUND_ROBIN, STRATEGIES
from broker.core.metrics import NodeBusy
from broker.core.tasks import ProcessKey
from broker.protocol import ErrorInfo, Register

# A group of at most this many nodes offering the same functions is searched at each pick
# instead of keeping a heap: two heap pushes per task cost more than looking at a few nodes.
SCAN_MAX = 8
HELD_WORK = 0.01  # seconds of work a node holds beyond its slots, at most `prefetch` tasks
FIRST_RUN_TIME = 1.0  # seconds per task assumed until a node has answered: hold little
RUN_TIME_WEIGHT = 0.2  # of the newest task in the moving average of run times


class Node:
    """A registered node (one DEALER connection of one node process)."""

    __slots__ = (
        "active",
        "adopts_interval",
        "backlog_told",
        "busy",
        "capacity",
        "completed",
        "confirms",
        "counted",
        "draining",
        "failed",
        "figures",
        "functions",
        "held",
        "host",
        "identity",
        "interval",
        "interval_before",
        "interval_changed",
        "last_seen",
        "last_sent",
        "name",
        "packed",
        "pid",
        "prefetch",
        "reclaiming",
        "replaced",
        "results_in",
        "retracting",
        "run_time",
        "slots",
        "stop",
        "stopping",
        "tie",
        "timer",
        "version",
        "waiting",
        "window",
    )

    def __init__(self, identity: bytes, register: Register, now: float, prefetch: int) -> None:
        self.identity = identity  # its ROUTER identity: unique per connection
        self.name, self.host, self.pid = register.name, register.host, register.pid
        self.functions = frozenset(register.functions)
        self.slots = register.capacity  # as registered
        self.capacity = register.capacity  # the slots, and those lent by waiting tasks
        self.prefetch = prefetch  # tasks it may hold beyond its slots (REGISTER's, capped)
        self.stop = register.stop  # it stops cancelled tasks on STOP (protocol.md 3.20)
        self.run_time = FIRST_RUN_TIME  # moving average of its tasks' run times, seconds
        self.window = register.capacity + min(prefetch, 1)  # RUNs it may have without RESULT
        self.last_seen = now  # when the broker last heard from it
        self.last_sent = now  # when the broker last sent it anything
        # The heartbeat interval it was told (REGISTERED, or a HEARTBEAT if it registered
        # `adopts_interval`), the one before, and when (broker.core.heartbeats).
        self.adopts_interval = register.adopts_interval
        self.packed = register.packed  # it takes RUNs in the packed form (protocol.md 2.5)
        self.interval = self.interval_before = 0.0
        self.interval_changed = -math.inf
        self.active: set[str] = set()  # task ids of the attempts it holds: all of them
        self.held: dict[str, str] = {}  # of those, not started yet: id -> function, oldest first
        self.retracting: set[str] = set()  # of those, asked back and not answered yet
        self.completed = 0
        self.failed = 0  # of those, RESULTs with an exit code other than 0
        # The sums of its set of functions (given by the pool), and what it added to them.
        self.figures: SetFigures = _NO_FIGURES
        self.counted = (0, 0, 0)
        self.busy = NodeBusy(now)  # its slot-seconds of running, for its utilisation
        self.draining = False  # it sent DEREGISTER: no new work
        # Its process was replaced (REGISTER `replaces`, protocol.md 7.4): when the broker
        # stops waiting for its last RESULTs, and how the attempts it still holds then fail.
        # A node found unreachable waits so too, with no failure (NodeLost), for a REGISTER
        # naming it in `replaces` to say how its process ended.
        self.replaced: tuple[float, tuple[int, ErrorInfo] | None] | None = None
        self.version = 0  # see the heaps below
        self.tie = 0  # when its load last changed (a count): among equal loads, first wins
        self.timer = 0  # its heartbeat and liveness check, see broker.core.timers
        self.backlog_told = 0  # the backlog hint it was sent last (protocol.md 3.4)
        # Of `active`, tasks that run but wait for other tasks (WAITING, protocol.md 5.9):
        # each lends its slot, counted in `capacity` on top of the registered slots.
        self.waiting: set[str] = set()
        # Slots lent by tasks that went on again, still in use: given back as tasks end.
        self.reclaiming = 0
        # It holds its RESULTs until the broker confirms them stored (STORED, protocol.md
        # 3.22): it registered with `attempts` and the broker keeps a journal.
        self.confirms = False
        self.results_in = 0  # RESULT messages received from it (a batch counts once)
        # Attempts it claimed at registration for tasks finished or unknown here, told to
        # stop: their RESULTs are dropped without an error (protocol.md 7.3).
        self.stopping: set[str] = set()

    @property
    def node_id(self) -> str:
        return self.identity.hex()

    @property
    def process(self) -> ProcessKey:
        return (self.name, self.host, self.pid)

    @property
    def free(self) -> int:
        """Places left in its window."""
        return self.window - len(self.active)

    @property
    def running(self) -> int:
        """Attempts it has started, as far as the broker knows."""
        return len(self.active) - len(self.held) - len(self.retracting)

    @property
    def idle_slot(self) -> bool:
        """Whether a slot has nothing to run: it would start a task at once."""
        return not self.held and self.running < self.capacity

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.node_id} {len(self.active)}/{self.capacity}>"


class SetFigures:
    """The nodes registered with one set of functions, summed (for STATUS, in O(sets)): how
    many, their slots, the tasks they were sent and not answered (`active`), of those the
    ones held unstarted or asked back (`held`), and RESULTs accepted. Kept by the pool as
    each node changes; `counted` on a node is what it added, taken back at its next change."""

    __slots__ = ("active", "completed", "functions", "held", "nodes", "slots")

    def __init__(self, functions: frozenset[str]) -> None:
        self.functions = functions  # the one set object its nodes share
        self.nodes = self.slots = self.active = self.held = self.completed = 0


_NO_FIGURES = SetFigures(frozenset())  # a node's until the pool adds it


@dataclass(eq=False)
class _Group:
    """Nodes that offer the same set of functions, with their least-loaded heap."""

    functions: frozenset[str]
    members: set[bytes] = field(default_factory=set)
    # (load, push order, identity, version); stale entries are skipped when they surface.
    # Among equal loads the node pushed first wins, so ties go round robin (as nginx's
    # least_conn): sequential tasks spread over idle nodes instead of all landing on the
    # one that answered last.
    heap: list[tuple[float, int, bytes, int]] = field(default_factory=list)


class _Ring:
    """The nodes offering one function, in turn (round robin). A node leaves in O(1): its
    entry stays, stale, until it comes round and is dropped; the ring is rebuilt when stale
    entries outnumber the live ones."""

    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        self.entries: deque[Node] = deque()
        self.live = 0

    def join(self, node: Node) -> None:
        self.entries.append(node)
        self.live += 1

    def leave(self, nodes: dict[bytes, Node]) -> None:
        """One member left (removed, or draining): compact if mostly stale."""
        self.live -= 1
        if len(self.entries) > 2 * self.live + 16:
            self.entries = deque(n for n in self.entries if _in_ring(nodes, n))

    def members(self, nodes: dict[bytes, Node]) -> list[bytes]:
        return [n.identity for n in self.entries if _in_ring(nodes, n)]


def _in_ring(nodes: dict[bytes, Node], node: Node) -> bool:
    return nodes.get(node.identity) is node and not node.draining


class NodePool:
    def __init__(self, strategy: str = LEAST_LOADED, max_prefetch: int = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.strategy = strategy
        self.max_prefetch = max_prefetch  # the most a node may hold beyond its slots
        self.nodes: dict[bytes, Node] = {}
        # Nodes holding unstarted tasks, by the tasks' function: identity -> how many. Where a
        # node with an idle slot looks for tasks to take back (RETRACT) and run itself.
        self._holding: dict[str, dict[bytes, int]] = {}
        self.held = 0  # unstarted tasks held by all nodes (read it; only the pool changes it)
        self._processes: dict[ProcessKey, set[bytes]] = {}  # identities per node process
        self._offering: dict[str, int] = {}  # nodes taking work, per function they offer
        # Whether any node that takes new work registered a function (a C call).
        self.offers: Callable[[str], bool] = self._offering.__contains__
        self._rings: dict[str, _Ring] = {}  # round robin only
        self._groups: dict[frozenset[str], _Group] = {}
        # Each set of functions registered, with the sums of its nodes (STATUS).
        self.function_sets: dict[frozenset[str], SetFigures] = {}
        self._groups_by_function: dict[str, list[_Group]] = {}
        self._tie = count()

    # ------------------------------------------------------------------ membership

    def add(self, identity: bytes, register: Register, now: float) -> Node:
        if identity in self.nodes:
            raise ValueError(f"node {identity.hex()} is already registered")
        node = Node(identity, register, now, min(register.prefetch, self.max_prefetch))
        # Nodes offering the same functions share one set: equal sets compare as the same
        # object (a cheap key for STATUS's sums by function set), and it is kept once.
        figures = self.function_sets.get(node.functions)
        if figures is None:
            figures = self.function_sets[node.functions] = SetFigures(node.functions)
        figures.nodes += 1
        figures.slots += node.slots
        node.functions, node.figures = figures.functions, figures
        self.nodes[identity] = node
        self._processes.setdefault(node.process, set()).add(identity)
        self._join(node)
        return node

    def remove(self, identity: bytes) -> Node | None:
        node = self.nodes.pop(identity, None)
        if node is None:
            return None
        if not node.draining:
            self._leave(node)
        for function in node.held.values():
            self._unhold(node, function)
        figures = node.figures
        active, held, completed = node.counted
        figures.active -= active
        figures.held -= held
        figures.completed -= completed
        figures.slots -= node.slots
        figures.nodes -= 1
        if not figures.nodes:
            del self.function_sets[node.functions]
        same = self._processes[node.process]
        same.discard(identity)
        if not same:
            del self._processes[node.process]
        return node

    def by_process(self, process: ProcessKey) -> list[Node]:
        """The registrations of one node process (usually one; more while a reconnected
        process's old registration has not expired yet)."""
        return [self.nodes[identity] for identity in self._processes.get(process, ())]

    def drain(self, identity: bytes) -> Node | None:
        """No new work for this node; it stays known until it runs nothing."""
        node = self.nodes.get(identity)
        if node is not None and not node.draining:
            node.draining = True
            self._leave(node)
        return node

    def _join(self, node: Node) -> None:
        node.tie = next(self._tie)
        offering = self._offering
        for function in node.functions:
            offering[function] = offering.get(function, 0) + 1
            if self.strategy == ROUND_ROBIN:
                self._rings.setdefault(function, _Ring()).join(node)
        group = self._groups.get(node.functions)
        if group is None:
            group = self._groups[node.functions] = _Group(node.functions)
            for function in node.functions:
                self._groups_by_function.setdefault(function, []).append(group)
        group.members.add(node.identity)
        if len(group.members) == SCAN_MAX + 1:  # large now: its heap holds every node
            group.heap = []
            for identity in group.members:
                self._push(group, self.nodes[identity])
        else:
            self._push(group, node)

    def _leave(self, node: Node) -> None:
        offering = self._offering
        for function in node.functions:
            offering[function] -= 1
            if not offering[function]:
                del offering[function]
                self._rings.pop(function, None)
            elif self.strategy == ROUND_ROBIN:
                self._rings[function].leave(self.nodes)
        group = self._groups[node.functions]
        group.members.discard(node.identity)
        node.version += 1  # its heap entries are stale now
        if not group.members:
            del self._groups[node.functions]
            for function in node.functions:
                groups = self._groups_by_function[function]
                groups.remove(group)
                if not groups:
                    del self._groups_by_function[function]

    # ------------------------------------------------------------------ picking

    def has_free(self, function: str) -> bool:
        """Whether a node taking work offers `function` and has a free place (for checks)."""
        groups = self._groups_by_function.get(function, ())
        return any(self.nodes[i].free > 0 for group in groups for i in group.members)

    def pick(self, function: str) -> Node | None:
        """A node that offers `function` and has a free place in its window, by the pool's
        strategy (least-loaded: a free slot before a place to hold the task)."""
        if self.strategy == ROUND_ROBIN:
            return self._pick_round_robin(function)
        return self._pick_least_loaded(function)

    def _pick_round_robin(self, function: str) -> Node | None:
        ring = self._rings.get(function)
        if ring is None:
            return None
        entries, nodes = ring.entries, self.nodes
        for _ in range(len(entries)):
            node = entries.popleft()
            if not _in_ring(nodes, node):
                continue  # it left: dropped now
            entries.append(node)
            if len(node.active) < node.window:
                return node
        return None

    def _pick_least_loaded(self, function: str) -> Node | None:
        best: tuple[float, int, bytes, int] | None = None
        for group in self._groups_by_function.get(function, ()):
            entry = self._top(group)
            if entry is not None and (best is None or entry < best):
                best = entry
        return None if best is None else self.nodes[best[2]]

    def _top(self, group: _Group) -> tuple[float, int, bytes, int] | None:
        if len(group.members) <= SCAN_MAX:
            return self._scan(group)
        heap = group.heap
        while heap:
            _, _, identity, version = heap[0]
            node = self.nodes.get(identity)
            if node is not None and node.version == version and len(node.active) < node.window:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _scan(self, group: _Group) -> tuple[float, int, bytes, int] | None:
        """The least-loaded node with a free place in a small group, looked for (cheaper
        than keeping a heap up to date at every load change): as a heap entry would be."""
        nodes, best = self.nodes, None
        for identity in group.members:
            node = nodes[identity]
            active = len(node.active)
            if active < node.window:
                entry = (active / node.capacity, node.tie, identity, node.version)
                if best is None or entry < best:
                    best = entry
        return best

    def _push(self, group: _Group, node: Node) -> None:
        if len(node.active) >= node.window or len(group.members) <= SCAN_MAX:
            return  # no free place, or a small group: `_scan` finds it
        heap = group.heap
        while heap and not self._current(heap[0]):
            # Most often the entry this node was picked by: drop it before it is buried.
            heapq.heappop(heap)
        if len(heap) > 4 * len(group.members) + 16:
            # Stale entries deep in the heap never surface on their own; rebuild.
            heap[:] = [e for e in heap if self._current(e)]
            heapq.heapify(heap)
        load = len(node.active) / node.capacity
        heapq.heappush(heap, (load, node.tie, node.identity, node.version))

    def _current(self, entry: tuple[float, int, bytes, int]) -> bool:
        node = self.nodes.get(entry[2])
        return node is not None and node.version == entry[3] and len(node.active) < node.window

    # ------------------------------------------------------------------ load

    def _recount(self, node: Node) -> None:
        """`node`'s tasks changed: its set's sums follow (O(1))."""
        figures, (active_was, held_was, completed_was) = node.figures, node.counted
        active, held = len(node.active), len(node.held) + len(node.retracting)
        figures.active += active - active_was
        figures.held += held - held_was
        figures.completed += node.completed - completed_was
        node.counted = (active, held, node.completed)

    def assign(self, node: Node, task_id: str, function: str) -> bool:
        """`node` was sent `task_id`: True if a slot starts it, False if the node holds it
        (behind the tasks it holds already)."""
        active = node.active
        if node.held or len(active) - len(node.retracting) >= node.capacity:
            active.add(task_id)
            node.held[task_id] = function
            self._hold(node, function)
            self._changed(node)
            self._recount(node)
            return False
        active.add(task_id)
        self._changed(node)
        self._recount(node)
        return True

    def lend(self, node: Node, task_id: str) -> None:
        """`task_id`, running on `node`, waits for other tasks: its slot takes another task
        meanwhile (the node counts one slot more)."""
        if task_id not in node.waiting:
            node.waiting.add(task_id)
            node.capacity += 1
            node.window += 1
            self._changed(node)

    def reclaim(self, node: Node, task_id: str) -> None:
        """`task_id` goes on (or ended): the slot it lent is its own again, as soon as the
        node runs no more than its slots allow (until then it runs over them)."""
        if task_id in node.waiting:
            node.waiting.remove(task_id)
            node.reclaiming += 1
            self._shrink(node)

    def _shrink(self, node: Node) -> None:
        shrunk = False
        while node.reclaiming and len(node.active) < node.window:
            node.reclaiming -= 1
            node.capacity -= 1
            node.window -= 1
            shrunk = True
        if shrunk:
            self._changed(node)

    def release(self, node: Node, task_id: str) -> bool:
        """`node` answered `task_id` (or gave it back): free its place; False if it had
        none. Held tasks wait for `promote`."""
        return self.release_all(node, (task_id,)) == 1

    def release_all(self, node: Node, task_ids: Iterable[str]) -> int:
        """`release` of each of `task_ids` (the tasks one RESULT message answered), the
        node's load updated once: how many had a place."""
        active, released = node.active, 0
        for task_id in task_ids:
            if task_id not in active:
                continue
            released += 1
            if node.waiting:
                self.reclaim(node, task_id)
            active.remove(task_id)
            if node.reclaiming:
                self._shrink(node)
            if node.held:
                function = node.held.pop(task_id, None)
                if function is not None:  # it ran before the broker counted a slot free
                    self._unhold(node, function)
            if node.retracting:
                node.retracting.discard(task_id)
        if released:
            node.completed += released
            if node.prefetch:
                work = node.capacity * HELD_WORK / node.run_time
                node.window = node.capacity + min(node.prefetch, max(1, int(work)))
            self._changed(node)
            self._recount(node)
        return released

    def promote(self, node: Node) -> str | None:
        """The oldest held task of `node`, if a slot is free to start it (it has then)."""
        held = node.held
        if not held or node.running >= node.capacity:
            return None
        task_id = next(iter(held))
        self._unhold(node, held.pop(task_id))
        self._recount(node)
        return task_id

    def start_held(self, node: Node, task_id: str) -> None:
        """`node` started a task the pool counted as held (its RESULT came first, or its
        answer to RETRACT says so)."""
        function = node.held.pop(task_id, None)
        if function is not None:
            self._unhold(node, function)
        node.retracting.discard(task_id)
        self._recount(node)

    # ------------------------------------------------------------------ taking back

    def holders(self, functions: frozenset[str]) -> Iterator[Node]:
        """Nodes holding unstarted tasks of any of `functions`."""
        for function in functions:
            for identity in self._holding.get(function, ()):
                yield self.nodes[identity]

    def retract(self, node: Node, functions: frozenset[str], most: int) -> list[str]:
        """Mark up to `most` of the tasks `node` holds (of `functions`, newest first) as
        asked back; their ids, for a RETRACT."""
        taken = []
        for task_id, function in reversed(node.held.items()):
            if function in functions:
                taken.append(task_id)
                if len(taken) >= most:
                    break
        for task_id in taken:
            self.ask_back(node, task_id)
        return taken

    def ask_back(self, node: Node, task_id: str) -> bool:
        """Mark one task `node` holds as asked back; False if it holds no such task."""
        function = node.held.pop(task_id, None)
        if function is None:
            return False
        self._unhold(node, function)
        node.retracting.add(task_id)
        return True

    def given_back(self, node: Node, task_id: str) -> bool:
        """The node gave back a task asked back: its place frees; False if it was not
        being asked back (answered meanwhile)."""
        if task_id not in node.retracting:
            return False
        node.retracting.remove(task_id)
        node.active.remove(task_id)
        self._changed(node)
        self._recount(node)
        return True

    def _hold(self, node: Node, function: str) -> None:
        by_node = self._holding.get(function)
        if by_node is None:
            by_node = self._holding[function] = {}
        by_node[node.identity] = by_node.get(node.identity, 0) + 1
        self.held += 1

    def _unhold(self, node: Node, function: str) -> None:
        by_node = self._holding[function]
        count = by_node[node.identity] - 1
        if count:
            by_node[node.identity] = count
        else:
            del by_node[node.identity]
            if not by_node:
                del self._holding[function]
        self.held -= 1

    def _changed(self, node: Node) -> None:
        node.version += 1
        node.tie = next(self._tie)
        if not node.draining:
            self._push(self._groups[node.functions], node)

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError if the ring, heaps and records disagree."""
        taking = {i for i, n in self.nodes.items() if not n.draining}
        offering: dict[str, int] = {}
        for identity in taking:
            for function in self.nodes[identity].functions:
                offering[function] = offering.get(function, 0) + 1
        assert offering == self._offering, "the count of nodes per function drifted"
        for function, ring in self._rings.items():
            in_ring = ring.members(self.nodes)
            assert in_ring, f"empty ring kept for {function}"
            assert len(in_ring) == ring.live, f"the ring for {function} miscounts"
            assert len(set(in_ring)) == len(in_ring), f"duplicate in ring for {function}"
            for identity in in_ring:
                assert identity in taking, f"ring for {function} holds a node not taking work"
                assert function in self.nodes[identity].functions
        self._check_held()
        for identity in taking:
            node = self.nodes[identity]
            most = node.capacity + node.prefetch  # its window shrinks as its tasks slow
            assert 0 <= len(node.active) <= most, f"{node.name} over its window"
            lent = len(node.waiting) + node.reclaiming
            assert node.capacity == node.slots + lent, f"{node.name}: lent slots drifted"
            assert node.waiting <= node.active, f"{node.name}: waits for what it does not run"
            if self.strategy == ROUND_ROBIN:
                for function in node.functions:
                    ring = self._rings[function]
                    assert identity in ring.members(self.nodes), f"{node.name} missing from ring"
            group = self._groups[node.functions]
            assert identity in group.members
            if node.free > 0 and len(group.members) > SCAN_MAX:
                assert any(self._current(e) and e[2] == identity for e in group.heap), (
                    f"{node.name} has a free slot but no current heap entry"
                )
        self._check_sums()
        indexed = {i for identities in self._processes.values() for i in identities}
        assert indexed == self.nodes.keys(), "the index by process drifted"
        members = {i for g in self._groups.values() for i in g.members}
        assert members == taking, "heap groups and records disagree"
        for function, groups in self._groups_by_function.items():
            assert all(function in g.functions for g in groups)

    def _check_sums(self) -> None:
        sums: dict[frozenset[str], list[int]] = {}
        for node in self.nodes.values():
            assert node.functions is node.figures.functions, f"{node.name}: set not shared"
            row = sums.setdefault(node.functions, [0, 0, 0, 0, 0])
            held = len(node.held) + len(node.retracting)
            for i, n in enumerate((1, node.slots, len(node.active), held, node.completed)):
                row[i] += n
        kept = {
            f: [x.nodes, x.slots, x.active, x.held, x.completed]
            for f, x in self.function_sets.items()
        }
        assert sums == kept, f"the sums by function set drifted: {sums} against {kept}"

    def _check_held(self) -> None:
        holding: dict[str, dict[bytes, int]] = {}
        for identity, node in self.nodes.items():
            assert node.held.keys() <= node.active, f"{node.name} holds what it was not sent"
            assert node.retracting <= node.active, f"{node.name} asked back what it lacks"
            assert not node.retracting & node.held.keys(), f"{node.name}: held and asked back"
            for function in node.held.values():
                by_node = holding.setdefault(function, {})
                by_node[identity] = by_node.get(identity, 0) + 1
        assert holding == self._holding, "the index of held tasks drifted"
        assert self.held == sum(len(node.held) for node in self.nodes.values()), "held drifted"
