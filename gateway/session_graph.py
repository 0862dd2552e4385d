"""The session graph from stored records: the DAG, its cycle check and its public view.

Pure code over `RequestRecord`s and `Variable`s (the runner reads them from the
store): rebuilding the DAG for analysis, refusing a registration that would
close a cycle, and the JSON of ``GET /v1/sessions/{sid}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    groups = graph.task_groups() if records else {}
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
