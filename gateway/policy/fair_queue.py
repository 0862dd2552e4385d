"""Weighted fair queuing between tenants, in two classes, with aging.

Self-clocked fair queuing: a job gets start tag ``max(V, tenant's last
finish tag)`` and finish tag ``start + cost / weight``; jobs leave in finish
tag order, and ``V`` follows the tag of the job that left last. A tenant
that queues 1,000 jobs at once gets tags far in the future, so another
tenant's job arriving later interleaves at once instead of waiting behind
them. The latency class always goes first; a throughput job queued longer
than ``max_wait_s`` is promoted into the latency class so it cannot starve.
Removal is lazy (heap entries are checked on pop), so every operation is
O(log n) amortised and nothing scans the queue.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

LATENCY = 0
THROUGHPUT = 1


@dataclass
class _Entry:
    tenant: str
    weight: float
    cost: float
    cls: int
    tag: float
    seq: int
    submitted: float
    promoted: bool = False
    queued: bool = True
    version: int = 0


class FairQueue:
    """Two-class WFQ over job ids. Keeps no job payloads, only their tags."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._entries: dict[str, _Entry] = {}
        self._heaps: tuple[list[tuple[float, int, int, str]], ...] = ([], [])
        self._vtime = [0.0, 0.0]
        self._last_finish: tuple[dict[str, float], dict[str, float]] = ({}, {})
        self._aging: deque[tuple[float, str]] = deque()
        self._seq = 0
        self._count = [0, 0]
        self._per_tenant: dict[str, int] = {}

    # queries -----------------------------------------------------------------
    def __len__(self) -> int:
        return self._count[0] + self._count[1]

    def __contains__(self, job_id: str) -> bool:
        e = self._entries.get(job_id)
        return e is not None and e.queued

    def class_len(self, cls: int) -> int:
        return self._count[cls]

    def tenant_counts(self) -> dict[str, int]:
        return {t: n for t, n in self._per_tenant.items() if n}

    def cls_of(self, job_id: str) -> int:
        return self._entries[job_id].cls

    def promoted(self, job_id: str) -> bool:
        e = self._entries.get(job_id)
        return bool(e and e.promoted)

    # updates -----------------------------------------------------------------
    def push(
        self, job_id: str, tenant: str, weight: float, cost: float, latency: bool, now: float
    ) -> None:
        """Queue a new job; its tag is fixed now and kept across requeues."""
        if job_id in self._entries:
            raise ValueError(f"job {job_id!r} already queued")
        cls = LATENCY if latency else THROUGHPUT
        e = _Entry(tenant, max(weight, 1e-6), max(cost, 1e-9), cls, 0.0, 0, now)
        e.tag = self._tag(e, cls)
        self._entries[job_id] = e
        self._heap_push(job_id, e)
        if cls == THROUGHPUT:
            self._aging.append((now, job_id))
        self._count_add(e, 1)

    def requeue(self, job_id: str) -> None:
        """Put back a popped job with its original tag (so it goes out early)."""
        e = self._entries.get(job_id)
        if e is None or e.queued:
            return
        e.queued = True
        self._heap_push(job_id, e)
        self._count_add(e, 1)

    def pop(self, now: float) -> str | None:
        """Next job by class then finish tag, or None. The job stays known
        (for requeue) until ``forget``."""
        self.age(now)
        for cls in (LATENCY, THROUGHPUT):
            heap = self._heaps[cls]
            while heap:
                tag, _, version, job_id = heapq.heappop(heap)
                e = self._entries.get(job_id)
                if e is None or not e.queued or e.version != version or e.cls != cls:
                    continue
                e.queued = False
                self._count_add(e, -1)
                self._vtime[cls] = max(self._vtime[cls], tag - e.cost / e.weight)
                return job_id
        return None

    def take(self, job_id: str) -> bool:
        """Remove a specific queued job (a group sibling) as if popped."""
        e = self._entries.get(job_id)
        if e is None or not e.queued:
            return False
        e.queued = False
        e.version += 1
        self._count_add(e, -1)
        return True

    def forget(self, job_id: str) -> None:
        """Drop all memory of a job (dispatched, cancelled)."""
        e = self._entries.pop(job_id, None)
        if e is not None and e.queued:
            self._count_add(e, -1)

    def age(self, now: float) -> None:
        """Promote throughput jobs queued longer than ``max_wait_s``."""
        aging = self._aging
        limit = now - self.max_wait_s
        while aging and aging[0][0] <= limit:
            _, job_id = aging.popleft()
            e = self._entries.get(job_id)
            if e is None or e.cls != THROUGHPUT:
                continue
            was_queued = e.queued
            if was_queued:
                self._count_add(e, -1)
            e.cls = LATENCY
            e.promoted = True
            e.tag = self._tag(e, LATENCY)
            e.version += 1
            if was_queued:
                self._count_add(e, 1)
                self._heap_push(job_id, e)

    # internals ---------------------------------------------------------------
    def _tag(self, e: _Entry, cls: int) -> float:
        last = self._last_finish[cls]
        start = max(self._vtime[cls], last.get(e.tenant, 0.0))
        finish = start + e.cost / e.weight
        last[e.tenant] = finish
        return finish

    def _heap_push(self, job_id: str, e: _Entry) -> None:
        self._seq += 1
        e.seq = self._seq if not e.seq else e.seq
        heapq.heappush(self._heaps[e.cls], (e.tag, e.seq, e.version, job_id))

    def _count_add(self, e: _Entry, d: int) -> None:
        self._count[e.cls] += d
        self._per_tenant[e.tenant] = self._per_tenant.get(e.tenant, 0) + d
