"""The session dataflow graph: requests (nodes) linked by semantic variables.

A node consumes variables (its placeholders) and produces at most one
(``X-Parrot-Output``). An edge ``src -> dst`` labelled ``var`` exists when
``src`` produces ``var`` and ``dst`` consumes it. Variables with no producer
are external inputs (set by ``PUT``). Requests arrive one at a time, in any
order, so every :meth:`SessionGraph.add` re-validates the whole graph:
each variable has at most one producer and the graph stays acyclic.

The analyses the scheduler needs are pure functions of the graph: topological
order, critical path under a cost model, backward objective deduction and
task groups (map stages).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from common.errors import Conflict, DependencyCycle
from common.types import Criteria

__all__ = [
    "CostModel",
    "CycleError",
    "DEFAULT_COST_MODEL",
    "DuplicateNode",
    "DuplicateProducer",
    "Edge",
    "Node",
    "SessionGraph",
    "estimate_cost",
]


class CycleError(DependencyCycle):
    """Adding a node would close a cycle; ``cycle`` alternates node ids and variables.

    E.g. ``["req-a", "x", "req-b", "y", "req-a"]``: req-a produces x, which
    req-b consumes to produce y, which req-a consumes.
    """


class DuplicateProducer(Conflict):
    """A variable is written once: a second producer is a 409."""

    def __init__(self, var: str, producer: str | None = None) -> None:
        who = f" (already produced by {producer})" if producer else ""
        super().__init__(f"variable '{var}' already has a producer{who}", param=var)
        self.var = var
        self.producer = producer


class DuplicateNode(Conflict):
    """A request id can appear once per session."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"request '{node_id}' is already in the session graph", param=node_id)
        self.node_id = node_id


@dataclass
class Node:
    """One request of a session; timing fields are filled in as it runs."""

    id: str
    inputs: tuple[str, ...]
    output: str | None
    criteria: Criteria = "latency"
    prompt_tokens: int = 0
    max_tokens: int = 0
    status: str = "waiting"
    engine: str | None = None
    cached_tokens: int = 0
    queued_ms: float | None = None
    run_ms: float | None = None

    def __post_init__(self) -> None:
        self.inputs = tuple(dict.fromkeys(self.inputs))  # dedupe, keep order
        if self.criteria not in ("latency", "throughput"):
            raise ValueError(f"criteria must be 'latency' or 'throughput', not {self.criteria!r}")


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    var: str


@dataclass(frozen=True)
class CostModel:
    """Seconds one request takes alone on an idle engine: prefill plus decode.

    Defaults approximate an H100 serving an 8B model. ``max_tokens <= 0``
    (the client set no limit) is costed as ``default_output_tokens``.
    Cached prompt tokens skip prefill.
    """

    prefill_s_per_token: float = 0.00005
    decode_s_per_token: float = 0.006
    overhead_s: float = 0.0
    default_output_tokens: int = 256

    def __call__(self, node: Node) -> float:
        prefill = max(0, node.prompt_tokens - node.cached_tokens)
        out = node.max_tokens if node.max_tokens > 0 else self.default_output_tokens
        return self.overhead_s + prefill * self.prefill_s_per_token + out * self.decode_s_per_token


DEFAULT_COST_MODEL = CostModel()


def estimate_cost(node: Node, model: CostModel = DEFAULT_COST_MODEL) -> float:
    """Default cost for :meth:`SessionGraph.critical_path`."""
    return model(node)


@dataclass
class SessionGraph:
    """All requests of one session and the variables between them."""

    _nodes: dict[str, Node] = field(default_factory=dict)
    _producer: dict[str, str] = field(default_factory=dict)
    _consumers: dict[str, list[str]] = field(default_factory=dict)

    # -- structure ---------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        """Nodes in insertion order."""
        return list(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def producer(self, var: str) -> str | None:
        return self._producer.get(var)

    def consumers(self, var: str) -> list[str]:
        return list(self._consumers.get(var, ()))

    def variables(self) -> list[str]:
        """Every variable mentioned, produced or consumed, first-seen order."""
        seen: dict[str, None] = {}
        for n in self._nodes.values():
            for v in n.inputs:
                seen.setdefault(v)
            if n.output is not None:
                seen.setdefault(n.output)
        return list(seen)

    def edges(self) -> list[Edge]:
        """Producer -> consumer edges, ordered by consumer insertion then input order."""
        return [
            Edge(p, n.id, v)
            for n in self._nodes.values()
            for v in n.inputs
            if (p := self._producer.get(v)) is not None
        ]

    def parents(self, node_id: str) -> list[str]:
        node = self._nodes[node_id]
        return list(dict.fromkeys(p for v in node.inputs if (p := self._producer.get(v))))

    def children(self, node_id: str) -> list[str]:
        out = self._nodes[node_id].output
        return [] if out is None else self.consumers(out)

    def ancestors(self, node_id: str) -> list[str]:
        """Every node ``node_id`` transitively depends on (BFS order)."""
        return self._reach(node_id, self.parents)

    def _reach(self, start: str, step: Callable[[str], list[str]]) -> list[str]:
        seen = {start}
        order: list[str] = []
        frontier = [start]
        while frontier:
            nxt: list[str] = []
            for nid in frontier:
                for m in step(nid):
                    if m not in seen:
                        seen.add(m)
                        order.append(m)
                        nxt.append(m)
            frontier = nxt
        return order

    # -- mutation ------------------------------------------------------------

    def check(self, node: Node) -> None:
        """Raise what :meth:`add` would raise, without changing the graph.

        Order of checks: duplicate id (409), duplicate producer (409), cycle (400).
        """
        if node.id in self._nodes:
            raise DuplicateNode(node.id)
        out = node.output
        if out is not None and out in self._producer:
            raise DuplicateProducer(out, self._producer[out])
        cycle = self._find_cycle(node)
        if cycle is not None:
            raise CycleError(cycle)

    def _find_cycle(self, node: Node) -> list[str] | None:
        """Shortest cycle through the new node, or None.

        A cycle needs a path ``node -out-> c -> ... -> p -v-> node`` where p
        produces an input v of node; BFS from the consumers of ``out`` finds
        the shortest such path.
        """
        out = node.output
        if out is None:
            return None
        if out in node.inputs:
            return [node.id, out, node.id]
        wanted = {p: v for v in node.inputs if (p := self._producer.get(v)) is not None}
        if not wanted:
            return None
        # parent[n] = (previous node id or None for the new node, variable on the edge)
        parent: dict[str, tuple[str | None, str]] = {}
        frontier: list[str] = []
        for c in self._consumers.get(out, ()):
            if c not in parent:
                parent[c] = (None, out)
                frontier.append(c)
        while frontier:
            nxt: list[str] = []
            for nid in frontier:
                if nid in wanted:
                    path: list[str] = [node.id, wanted[nid], nid]
                    cur: str | None = nid
                    while cur is not None:
                        prev, var = parent[cur]
                        path.append(var)
                        path.append(prev if prev is not None else node.id)
                        cur = prev
                    path.reverse()
                    return path
                nout = self._nodes[nid].output
                if nout is None:
                    continue
                for c in self._consumers.get(nout, ()):
                    if c not in parent:
                        parent[c] = (nid, nout)
                        nxt.append(c)
            frontier = nxt
        return None

    def add(self, node: Node) -> None:
        """Validate (see :meth:`check`) and insert; on error the graph is unchanged."""
        self.check(node)
        self._nodes[node.id] = node
        if node.output is not None:
            self._producer[node.output] = node.id
        for v in node.inputs:
            self._consumers.setdefault(v, []).append(node.id)

    # -- analyses ------------------------------------------------------------

    def topological_order(self) -> list[str]:
        """Kahn's order; ties broken by insertion order, so it is deterministic."""
        index = {nid: i for i, nid in enumerate(self._nodes)}
        indeg = {nid: len(self.parents(nid)) for nid in self._nodes}
        heap = [index[n] for n, d in indeg.items() if d == 0]
        heapq.heapify(heap)
        ids = list(self._nodes)
        order: list[str] = []
        while heap:
            nid = ids[heapq.heappop(heap)]
            order.append(nid)
            for c in dict.fromkeys(self.children(nid)):
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(heap, index[c])
        return order

    def critical_path(
        self, cost: Callable[[Node], float] = estimate_cost
    ) -> tuple[list[str], float]:
        """The longest source-to-sink path by summed node cost, and its cost.

        Ties go to the path found first in topological order. Pass a cost that
        uses ``run_ms`` for finished nodes to get the realised critical path.
        """
        best: dict[str, float] = {}
        prev: dict[str, str | None] = {}
        for nid in self.topological_order():
            node = self._nodes[nid]
            base, via = 0.0, None
            for p in self.parents(nid):
                if via is None or best[p] > base:
                    base, via = best[p], p
            best[nid] = base + float(cost(node))
            prev[nid] = via
        if not best:
            return [], 0.0
        end = next(iter(best))
        for nid, c in best.items():  # first maximum in topological order
            if c > best[end]:
                end = nid
        path: list[str] = []
        cur: str | None = end
        while cur is not None:
            path.append(cur)
            cur = prev[cur]
        path.reverse()
        return path, best[end]

    def downstream(self, cost: Callable[[Node], float] = estimate_cost) -> dict[str, float]:
        """For every node, the cost of the longest path *after* it to a sink: the
        work still to do on its application's critical path once it finishes. The
        scheduler runs a request with more downstream work first (least slack)."""
        after: dict[str, float] = {}
        for nid in reversed(self.topological_order()):
            after[nid] = max(
                (after[c] + float(cost(self._nodes[c])) for c in self.children(nid)), default=0.0
            )
        return after

    def deduce_objectives(self) -> dict[str, Criteria]:
        """Parrot's backward objective deduction.

        Rule: a node is ``"latency"`` iff its own criteria is ``"latency"``
        (the default) or it transitively produces an input of such a node;
        otherwise ``"throughput"``. So latency propagates backwards from every
        latency-annotated request to all its producers, and only work whose
        every consumer chain is throughput-only may be batched for throughput.
        """
        result: dict[str, Criteria] = {nid: "throughput" for nid in self._nodes}
        stack = [nid for nid, n in self._nodes.items() if n.criteria == "latency"]
        for nid in stack:
            result[nid] = "latency"
        while stack:
            nid = stack.pop()
            for p in self.parents(nid):
                if result[p] != "latency":
                    result[p] = "latency"
                    stack.append(p)
        return result

    def task_groups(self) -> dict[str, str]:
        """Map stages: sibling producers feeding one consumer, mutually independent.

        For each consumer, take the nodes producing its inputs and drop any that
        is an ancestor of another (an earlier stage); two or more left form a
        candidate group. A node joins at most one group: candidates are taken
        largest first (then by consumer insertion order) and later ones keep
        only unassigned members (still needing two). Nodes in no group are
        absent from the result. Group id: ``grp:<consumer>:<hash of the
        members' output variables>``, stable across processes.
        """
        # Ancestor sets as bitmasks over topological positions, built in one pass
        # (big-int ORs run at C speed): linear in edges x nodes/64 words, where sets
        # of node ids were quadratic (seconds at 5,000 requests).
        order = self.topological_order()
        bit = {nid: 1 << i for i, nid in enumerate(order)}
        anc: dict[str, int] = {}
        for nid in order:
            mask = 0
            for p in self.parents(nid):
                mask |= anc[p] | bit[p]
            anc[nid] = mask

        candidates: list[tuple[int, int, str, list[str]]] = []
        for idx, (cid, _node) in enumerate(self._nodes.items()):
            prods = self.parents(cid)
            if len(prods) < 2:
                continue
            # p is an earlier stage when it is an ancestor of another producer q
            reach = 0
            for q in prods:
                reach |= anc[q]
            members = [p for p in prods if not reach & bit[p]]
            if len(members) >= 2:
                candidates.append((-len(members), idx, cid, members))
        candidates.sort(key=lambda c: (c[0], c[1]))
        groups: dict[str, str] = {}
        for _neg, _idx, cid, members in candidates:
            free = [m for m in members if m not in groups]
            if len(free) < 2:
                continue
            outs = sorted(str(self._nodes[m].output) for m in free)
            digest = hashlib.blake2b("\0".join(outs).encode(), digest_size=6).hexdigest()
            gid = f"grp:{cid}:{digest}"
            for m in free:
                groups[m] = gid
        return groups
