"""NodePool: the registered nodes, their slots, and which node takes the next task.

A node is picked for a task either from a per-function ready ring (round robin) or from a
least-loaded heap (active tasks per unit of capacity). Nodes that registered the same set of
functions share one heap, so a load change costs one push whatever the number of functions,
and picking for a function looks at the top of one heap per distinct set that offers it.
Heap entries are invalidated lazily by a per-node version number.

Pure state: no sockets, no clock. Time comes in as `now`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from broker.core.config import LEAST_LOADED, ROUND_ROBIN, STRATEGIES
from broker.core.tasks import ProcessKey
from broker.protocol import Register


class Node:
    """A registered node (one DEALER connection of one node process)."""

    __slots__ = (
        "active",
        "backlog_told",
        "capacity",
        "completed",
        "draining",
        "functions",
        "host",
        "identity",
        "last_seen",
        "last_sent",
        "name",
        "pid",
        "timer",
        "version",
    )

    def __init__(self, identity: bytes, register: Register, now: float) -> None:
        self.identity = identity  # its ROUTER identity: unique per connection
        self.name, self.host, self.pid = register.name, register.host, register.pid
        self.functions = frozenset(register.functions)
        self.capacity = register.capacity
        self.last_seen = now  # when the broker last heard from it
        self.last_sent = now  # when the broker last sent it anything
        self.active: set[str] = set()  # task ids of the attempts it holds
        self.completed = 0
        self.draining = False  # it sent DEREGISTER: no new work
        self.version = 0  # see the heaps below
        self.timer = 0  # its heartbeat and liveness check, see broker.core.timers
        self.backlog_told = 0  # the backlog hint it was sent last (protocol.md 3.4)

    @property
    def node_id(self) -> str:
        return self.identity.hex()

    @property
    def process(self) -> ProcessKey:
        return (self.name, self.host, self.pid)

    @property
    def free(self) -> int:
        return self.capacity - len(self.active)

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.node_id} {len(self.active)}/{self.capacity}>"


@dataclass(eq=False)
class _Group:
    """Nodes that offer the same set of functions, with their least-loaded heap."""

    functions: frozenset[str]
    members: set[bytes] = field(default_factory=set)
    # (load, -push order, identity, version); stale entries are skipped when they surface.
    # Among equal loads the node pushed last wins: an idle node that just answered takes
    # the next task while its process is warm, instead of tasks cycling through cold nodes.
    heap: list[tuple[float, int, bytes, int]] = field(default_factory=list)


class NodePool:
    def __init__(self, strategy: str = LEAST_LOADED) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.strategy = strategy
        self.nodes: dict[bytes, Node] = {}
        self._processes: dict[ProcessKey, set[bytes]] = {}  # identities per node process
        self._offering: dict[str, int] = {}  # nodes taking work, per function they offer
        # Whether any node that takes new work registered a function (a C call).
        self.offers: Callable[[str], bool] = self._offering.__contains__
        self._rings: dict[str, deque[bytes]] = {}  # round robin only
        self._groups: dict[frozenset[str], _Group] = {}
        self._groups_by_function: dict[str, list[_Group]] = {}
        self._tie = count()

    # ------------------------------------------------------------------ membership

    def add(self, identity: bytes, register: Register, now: float) -> Node:
        if identity in self.nodes:
            raise ValueError(f"node {identity.hex()} is already registered")
        node = Node(identity, register, now)
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
        offering = self._offering
        for function in node.functions:
            offering[function] = offering.get(function, 0) + 1
            if self.strategy == ROUND_ROBIN:
                self._rings.setdefault(function, deque()).append(node.identity)
        group = self._groups.get(node.functions)
        if group is None:
            group = self._groups[node.functions] = _Group(node.functions)
            for function in node.functions:
                self._groups_by_function.setdefault(function, []).append(group)
        group.members.add(node.identity)
        self._push(group, node)

    def _leave(self, node: Node) -> None:
        offering = self._offering
        for function in node.functions:
            offering[function] -= 1
            if not offering[function]:
                del offering[function]
            if self.strategy == ROUND_ROBIN:
                ring = self._rings[function]
                ring.remove(node.identity)  # O(ring): a ring is for a few nodes
                if not ring:
                    del self._rings[function]
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
        """Whether a node taking work offers `function` and has a free slot (for checks)."""
        groups = self._groups_by_function.get(function, ())
        return any(self.nodes[i].free > 0 for group in groups for i in group.members)

    def pick(self, function: str) -> Node | None:
        """A node that offers `function` and has a free slot, by the pool's strategy."""
        if self.strategy == ROUND_ROBIN:
            return self._pick_round_robin(function)
        return self._pick_least_loaded(function)

    def _pick_round_robin(self, function: str) -> Node | None:
        ring = self._rings.get(function)
        if not ring:
            return None
        for _ in range(len(ring)):
            node = self.nodes[ring[0]]
            ring.rotate(-1)
            if len(node.active) < node.capacity:
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
        heap = group.heap
        while heap:
            _, _, identity, version = heap[0]
            node = self.nodes.get(identity)
            if node is not None and node.version == version and len(node.active) < node.capacity:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _push(self, group: _Group, node: Node) -> None:
        if len(node.active) >= node.capacity:  # no free slot
            return
        heap = group.heap
        while heap and not self._current(heap[0]):
            # Most often the entry this node was picked by: drop it before it is buried.
            heapq.heappop(heap)
        if len(heap) > 4 * len(group.members) + 16:
            # Stale entries deep in the heap never surface on their own; rebuild.
            heap[:] = [e for e in heap if self._current(e)]
            heapq.heapify(heap)
        load = len(node.active) / node.capacity
        heapq.heappush(heap, (load, -next(self._tie), node.identity, node.version))

    def _current(self, entry: tuple[float, int, bytes, int]) -> bool:
        node = self.nodes.get(entry[2])
        return node is not None and node.version == entry[3] and len(node.active) < node.capacity

    # ------------------------------------------------------------------ load

    def assign(self, node: Node, task_id: str) -> None:
        node.active.add(task_id)
        self._changed(node)

    def release(self, node: Node, task_id: str) -> bool:
        """Free the slot `task_id` held on `node`; False if it held none."""
        if task_id not in node.active:
            return False
        node.active.remove(task_id)
        node.completed += 1
        self._changed(node)
        return True

    def _changed(self, node: Node) -> None:
        node.version += 1
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
            assert ring, f"empty ring kept for {function}"
            assert len(set(ring)) == len(ring), f"duplicate in ring for {function}"
            for identity in ring:
                assert identity in taking, f"ring for {function} holds a node not taking work"
                assert function in self.nodes[identity].functions
        for identity in taking:
            node = self.nodes[identity]
            assert 0 <= len(node.active) <= node.capacity, f"{node.name} over capacity"
            if self.strategy == ROUND_ROBIN:
                for function in node.functions:
                    assert identity in self._rings[function], f"{node.name} missing from ring"
            group = self._groups[node.functions]
            assert identity in group.members
            if node.free > 0:
                assert any(self._current(e) and e[2] == identity for e in group.heap), (
                    f"{node.name} has a free slot but no current heap entry"
                )
        indexed = {i for identities in self._processes.values() for i in identities}
        assert indexed == self.nodes.keys(), "the index by process drifted"
        members = {i for g in self._groups.values() for i in g.members}
        assert members == taking, "heap groups and records disagree"
        for function, groups in self._groups_by_function.items():
            assert all(function in g.functions for g in groups)
