"""Two-class fair queuing between tenants, application order inside a tenant, aging.

Between tenants: self-clocked fair queuing. Each job, when queued, gives its
tenant a tag ``finish = max(V, tenant's last finish) + cost / weight``; the
tenant holding the smallest tag goes next and ``V`` follows its start tag. A
tenant that queues 1,000 jobs at once gets tags far in the future, so another
tenant's job arriving later interleaves at once instead of waiting behind them.

Inside a tenant: the tags are the tenant's *slots*, and the job that fills the
next slot is the tenant's best by ``order`` (smallest first; the scheduler
passes ``(application start, -downstream work)``), not its oldest. So a
reduce submitted late by an application that started early takes the
tenant's next slot ahead of the maps of applications that started after it
(application-level FIFO), while the tenant's share against other tenants is
unchanged.

Classes: latency always goes first; a throughput job queued longer than
``max_wait_s`` is promoted into the latency class so it cannot starve.
Removals are lazy (heap entries are checked when they surface), so every
operation is O(log n) amortised and nothing scans the queue.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field

LATENCY = 0
THROUGHPUT = 1

Order = tuple[float, ...]


@dataclass
class _Entry:
    tenant: str
    weight: float
    cost: float
    cls: int
    tag: float  # the slot this job's arrival gave its tenant
    order: Order
    seq: int
    submitted: float
    promoted: bool = False
    queued: bool = True
    slot: float = 0.0  # the tenant slot it took when popped (given back on requeue)


@dataclass
class _Tenant:
    """One tenant's queued jobs of one class: its slot tags (sorted) and jobs by order.

    Slots are interchangeable: a job leaving unserved gives up the tenant's latest
    slot, one put back (requeue) returns its own."""

    tags: list[float] = field(default_factory=list)
    jobs: list[tuple[Order, int, str]] = field(default_factory=list)
    count: int = 0
    live: int | None = None  # seq of this tenant's one valid entry in the ready heap
    live_tag: float = 0.0

    def min_tag(self) -> float | None:
        return self.tags[0] if self.tags else None


class FairQueue:
    """Two-class fair queue over job ids. Keeps no job payloads, only tags and orders."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._entries: dict[str, _Entry] = {}
        self._tenants: tuple[dict[str, _Tenant], ...] = ({}, {})
        self._ready: tuple[list[tuple[float, int, str]], ...] = ([], [])  # (min tag, seq, tenant)
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
        self,
        job_id: str,
        tenant: str,
        weight: float,
        cost: float,
        latency: bool,
        now: float,
        order: Order = (),
    ) -> None:
        """Queue a new job; its tenant slot and its order are fixed now."""
        if job_id in self._entries:
            raise ValueError(f"job {job_id!r} already queued")
        cls = LATENCY if latency else THROUGHPUT
        self._seq += 1
        e = _Entry(tenant, max(weight, 1e-6), max(cost, 1e-9), cls, 0.0, order or (now,),
                   self._seq, now)
        e.tag = self._new_tag(e, cls)
        self._entries[job_id] = e
        self._enqueue(job_id, e, e.tag)
        if cls == THROUGHPUT:
            self._aging.append((now, job_id))

    def pop(self, now: float) -> str | None:
        """Next job: latency class first, then the tenant with the smallest slot tag,
        then that tenant's best job by order. It stays known (for ``requeue``)
        until ``forget``."""
        self.age(now)
        for cls in (LATENCY, THROUGHPUT):
            ready = self._ready[cls]
            tenants = self._tenants[cls]
            while ready:
                tag, seq, name = ready[0]
                t = tenants.get(name)
                heapq.heappop(ready)
                if t is None or seq != t.live:
                    continue  # superseded when the tenant's smallest tag changed
                t.live = None
                job_id = self._best_job(t, cls)
                if job_id is None:  # pragma: no cover - slots and jobs are kept in step
                    t.tags.clear()
                    continue
                t.tags.pop(0)
                e = self._entries[job_id]
                e.queued, e.slot = False, tag
                self._count_add(e, -1)
                t.count -= 1
                self._vtime[cls] = max(self._vtime[cls], tag - e.cost / e.weight)
                self._push_ready(cls, name, t)
                return job_id
        return None

    def requeue(self, job_id: str) -> None:
        """Put back a popped job with the slot it took and its order (it goes out early)."""
        e = self._entries.get(job_id)
        if e is None or e.queued:
            return
        self._enqueue(job_id, e, e.slot)

    def take(self, job_id: str) -> bool:
        """Remove a specific queued job (a group sibling) as if popped."""
        e = self._entries.get(job_id)
        if e is None or not e.queued:
            return False
        t = self._tenants[e.cls][e.tenant]
        slot = t.tags.pop(0)  # it takes the tenant's next slot, as pop would
        e.queued, e.slot = False, slot
        t.count -= 1
        self._count_add(e, -1)
        self._push_ready(e.cls, e.tenant, t)
        return True

    def forget(self, job_id: str) -> None:
        """Drop all memory of a job (dispatched, cancelled)."""
        e = self._entries.pop(job_id, None)
        if e is not None and e.queued:
            t = self._tenants[e.cls][e.tenant]
            t.tags.pop()
            t.count -= 1
            self._count_add(e, -1)
            self._push_ready(e.cls, e.tenant, t)

    def age(self, now: float) -> None:
        """Promote throughput jobs queued longer than ``max_wait_s``."""
        aging = self._aging
        limit = now - self.max_wait_s
        while aging and aging[0][0] <= limit:
            _, job_id = aging.popleft()
            e = self._entries.get(job_id)
            if e is None or e.cls != THROUGHPUT:
                continue
            if e.queued:
                self.forget(job_id)
                self._entries[job_id] = e
                e.cls, e.promoted = LATENCY, True
                e.tag = self._new_tag(e, LATENCY)
                self._enqueue(job_id, e, e.tag)
            else:
                e.cls, e.promoted = LATENCY, True
                e.tag = e.slot = self._new_tag(e, LATENCY)

    # internals ---------------------------------------------------------------
    def _new_tag(self, e: _Entry, cls: int) -> float:
        last = self._last_finish[cls]
        start = max(self._vtime[cls], last.get(e.tenant, 0.0))
        finish = start + e.cost / e.weight
        last[e.tenant] = finish
        return finish

    def _enqueue(self, job_id: str, e: _Entry, tag: float) -> None:
        t = self._tenants[e.cls].get(e.tenant)
        if t is None:
            t = self._tenants[e.cls][e.tenant] = _Tenant()
        bisect.insort(t.tags, tag)
        heapq.heappush(t.jobs, (e.order, e.seq, job_id))
        t.count += 1
        e.queued = True
        self._count_add(e, 1)
        self._push_ready(e.cls, e.tenant, t)

    def _push_ready(self, cls: int, name: str, t: _Tenant) -> None:
        """Keep exactly one valid ready entry per tenant, at its smallest tag: a new entry
        only when that tag changed (the old one is then skipped once when it surfaces),
        so the heap holds O(changes) entries and each is popped at most once."""
        tag = t.min_tag()
        if tag is None:
            t.live = None
            return
        if t.live is not None and t.live_tag == tag:
            return
        self._seq += 1
        heapq.heappush(self._ready[cls], (tag, self._seq, name))
        t.live, t.live_tag = self._seq, tag

    def _best_job(self, t: _Tenant, cls: int) -> str | None:
        jobs = t.jobs
        while jobs:
            _, _, job_id = jobs[0]
            e = self._entries.get(job_id)
            if e is None or not e.queued or e.cls != cls:
                heapq.heappop(jobs)
                continue
            heapq.heappop(jobs)
            return job_id
        return None

    def _count_add(self, e: _Entry, d: int) -> None:
        self._count[e.cls] += d
        self._per_tenant[e.tenant] = self._per_tenant.get(e.tenant, 0) + d
