"""The session graph from stored records: the DAG, its cycle check and its public view.

Pure code over `RequestRecord`s and `Variable`s (the runner reads them from the
store): rebuilding the DAG for analysis, refusing a registration that would
close a cycle, and the JSON of ``GET /v1/sessions/{sid}``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from analysis.dag import CycleError, DuplicateProducer, Node, SessionGraph, estimate_cost
from analysis.prefix import prefix_groups
from common.errors import Conflict, DependencyCycle
from common.types import JSON

from .store import RequestRecord, Variable

log = logging.getLogger("parrot.sessions")


def node_of(rec: RequestRecord) -> Node:
    return Node(
        id=rec.id,
        inputs=tuple(rec.inputs),
        output=rec.output,
        criteria=rec.criteria,  # type: ignore[arg-type]
        prompt_tokens=rec.prompt_tokens or 0,
        max_tokens=rec.max_tokens or 0,
        status=rec.status,
    )


def graph_of(records: list[RequestRecord]) -> SessionGraph:
    graph = SessionGraph()
    for rec in sorted(records, key=lambda r: r.created_at):
        try:
            graph.add(node_of(rec))
        except (CycleError, DuplicateProducer):  # cannot happen for stored graphs; stay robust
            log.warning("inconsistent stored graph at %s", rec.id)
    return graph


def cycle_check(rec: RequestRecord, param: str) -> Callable[[list[RequestRecord]], None]:
    """The validator `SessionStore.register_request` runs on the stored records: adding
    `rec` must not close a cycle (DependencyCycle) nor give its output a second
    producer (Conflict on `param`)."""

    def validate(existing: list[RequestRecord]) -> None:
        graph = graph_of(existing)
        try:
            graph.check(node_of(rec))
        except CycleError as exc:
            raise DependencyCycle(list(exc.cycle)) from exc
        except DuplicateProducer as exc:
            raise Conflict(f"variable '{rec.output}' already has a producer", param=param) from exc

    return validate


def graph_view(
    session: str,
    records: list[RequestRecord],
    variables: list[Variable],
    *,
    block_tokens: float,
    warmup_min_tokens: int,
) -> JSON:
    """The public session graph. ``objective`` and ``group`` are the analysis of the graph
    as it stands now; ``criteria_effective`` and ``group_effective`` are what the
    scheduler used when the request ran (absent before it ran)."""
    graph = graph_of(records)
    path, bound = graph.critical_path(estimate_cost) if records else ([], 0.0)
    objectives = graph.deduce_objectives() if records else {}
    groups = stable_groups(graph) if records else {}
    # Stored block hashes stand in for tokens: groups share >= warmup_min_tokens.
    min_blocks = max(1, int(warmup_min_tokens // block_tokens))
    pgroups = prefix_groups(
        {r.id: r.prefix_hashes for r in records if r.prefix_hashes}, min_tokens=min_blocks, block=1
    )
    return {
        "session": session,
        "requests": [
            {
                **r.to_public(),
                "objective": objectives.get(r.id),
                "group": groups.get(r.id),
                "created_at": r.created_at,
                "ready_at": r.ready_at,
                "queued_at": r.queued_at,
                "started_at": r.started_at,
                "first_token_at": r.first_token_at,
                "finished_at": r.finished_at,
            }
            for r in sorted(records, key=lambda r: r.created_at)
        ],
        "variables": [v.to_public() for v in variables],
        "edges": [{"from": e.src, "to": e.dst, "variable": e.var} for e in graph.edges()],
        "critical_path": path,
        "critical_path_s": bound,
        "prefix_groups": [
            {"requests": g.members, "shared_tokens": round(g.shared_tokens * block_tokens)}
            for g in pgroups
        ],
    }


# --------------------------------------------------------------- analysis cache


@dataclass
class Analysis:
    """What the scheduler needs of a session graph at one version, computed once."""

    graph: SessionGraph
    version: int
    _objectives: dict[str, str] | None = None
    _groups: dict[str, str] | None = None
    _downstream: dict[str, float] | None = None

    def objective(self, rid: str, default: str) -> str:
        if self._objectives is None:
            self._objectives = dict(self.graph.deduce_objectives())
        return self._objectives.get(rid, default)

    def group(self, rid: str) -> str | None:
        if self._groups is None:
            self._groups = stable_groups(self.graph)
        return self._groups.get(rid)

    def downstream(self, rid: str) -> float:
        if self._downstream is None:
            self._downstream = self.graph.downstream(estimate_cost)
        return self._downstream.get(rid, 0.0)

    def producers(self, inputs: list[str]) -> list[str]:
        return [p for v in inputs if (p := self.graph.producer(v)) is not None]


def stable_groups(graph: SessionGraph) -> dict[str, str]:
    """Task groups named by their common consumer only (``grp:<consumer id>``): the id
    stays the same while siblings are still registering, so a sibling queued early and
    one analysed later agree on it (the graph's own id also hashes the members known)."""
    return {m: gid.rsplit(":", 1)[0] for m, gid in graph.task_groups().items()}


class GraphCache:
    """This replica's copy of session graphs, by version (``meta.graph``, bumped by every
    registration). A registration made here extends the copy in place when it is the
    next version; anything else makes the copy stale until the runner re-reads it.
    Bounded (least recently used sessions go first). Pure: no I/O."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self._entries: OrderedDict[tuple[str, str], Analysis] = OrderedDict()

    def get(self, tenant: str, session: str, version: int | None) -> Analysis | None:
        """The analysis at ``version`` (None: whatever is held), or None if not held."""
        a = self._entries.get((tenant, session))
        if a is None or (version is not None and a.version != version):
            return None
        self._entries.move_to_end((tenant, session))
        return a

    def put(self, tenant: str, session: str, records: list[RequestRecord], version: int) -> Analysis:
        a = Analysis(graph_of(records), version)
        self._store((tenant, session), a)
        return a

    def added(self, rec: RequestRecord, version: int) -> None:
        """``rec`` was registered here and the graph is now at ``version``."""
        key = (rec.tenant, rec.session)
        a = self._entries.get(key)
        if a is None and version == 1:
            a = Analysis(SessionGraph(), 0)
        if a is None or a.version != version - 1:
            self._entries.pop(key, None)  # missed someone else's registration: re-read
            return
        try:
            a.graph.add(node_of(rec))
        except (CycleError, DuplicateProducer):
            self._entries.pop(key, None)
            return
        self._store(key, Analysis(a.graph, version))

    def drop(self, tenant: str, session: str) -> None:
        self._entries.pop((tenant, session), None)

    def _store(self, key: tuple[str, str], a: Analysis) -> None:
        self._entries[key] = a
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)
