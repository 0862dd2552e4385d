"""Per-engine load bookkeeping for the policies, with O(log E) least-loaded picks.

Each engine has a hard in-flight cap (``capacity``) and a lower one for
throughput work (``thr_limit``), leaving a few slots that only
latency-critical jobs may take. Two lazy heaps (one per class) hold the
engines with a free slot for that class, keyed by outstanding work; an entry
is valid while the engine's ``version`` is unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

LATENCY = 0
THROUGHPUT = 1


@dataclass
class EngineState:
    name: str
    capacity: int  # hard cap on requests in flight (and reserved for held followers)
    thr_limit: int  # cap for throughput-class work
    kv_capacity: int | None  # KV tokens; None = unknown, not enforced
    order: int  # tie-break: insertion order
    external_work: float  # work assumed per request another client sent
    healthy: bool = True
    inflight: int = 0
    reserved: int = 0  # followers held for a warm-up on this engine
    work: float = 0.0  # outstanding work estimate of our in-flight jobs
    kv_tokens: int = 0
    external_reqs: int = 0  # requests on the engine that we did not send (from on_load)
    reported_tokens: int = 0
    backlog: float = 0.0  # prefill cost (decode steps) of our jobs whose prefill is not done
    version: int = 0
    jobs: set[str] = field(default_factory=set)

    @property
    def load(self) -> int:
        """Requests on the engine, counted for the imbalance test."""
        return self.inflight + self.reserved + self.external_reqs

    @property
    def key(self) -> float:
        """Outstanding work; the least-loaded order."""
        return self.work + self.external_reqs * self.external_work

    def limit(self, cls: int) -> int:
        return self.capacity if cls == LATENCY else self.thr_limit

    def free(self, cls: int) -> int:
        if not self.healthy:
            return 0
        return max(0, self.limit(cls) - self.inflight - self.reserved)

    def fits(self, kv: int, cls: int) -> bool:
        if self.free(cls) <= 0:
            return False
        busy = self.inflight + self.reserved
        return self.kv_capacity is None or busy == 0 or self.kv_tokens + kv <= self.kv_capacity


class EngineTable:
    """Engines by name, free-slot totals per class, and least-loaded heaps."""

    def __init__(self, latency_reserve_frac: float, external_work: float) -> None:
        self.engines: dict[str, EngineState] = {}
        self.free = [0, 0]  # free slots summed over healthy engines, per class
        self._reserve_frac = latency_reserve_frac
        self._external_work = external_work
        self._heaps: tuple[list[tuple[float, int, int, int, str]], ...] = ([], [])
        self._order = 0

    def __contains__(self, name: str) -> bool:
        return name in self.engines

    def __len__(self) -> int:
        return len(self.engines)

    def get(self, name: str) -> EngineState | None:
        return self.engines.get(name)

    def healthy_count(self) -> int:
        return sum(1 for e in self.engines.values() if e.healthy)

    # membership --------------------------------------------------------------
    def add(self, name: str, capacity: int, kv_capacity: int | None) -> EngineState:
        capacity = max(1, capacity)
        thr = capacity - int(capacity * self._reserve_frac) if capacity > 1 else capacity
        old = self.engines.get(name)
        if old is not None:
            self._count(old, -1)
            old.capacity, old.thr_limit, old.kv_capacity = capacity, max(1, thr), kv_capacity
            self._changed(old)
            return old
        self._order += 1
        e = EngineState(name, capacity, max(1, thr), kv_capacity, self._order, self._external_work)
        self.engines[name] = e
        self._changed(e)
        return e

    def remove(self, name: str) -> EngineState | None:
        e = self.engines.pop(name, None)
        if e is not None:
            self._count(e, -1)
            e.version += 1
        return e

    # updates -----------------------------------------------------------------
    def update(
        self,
        e: EngineState,
        *,
        inflight: int = 0,
        reserved: int = 0,
        work: float = 0.0,
        kv: int = 0,
        healthy: bool | None = None,
        external_reqs: int | None = None,
    ) -> None:
        self._count(e, -1)
        e.inflight += inflight
        e.reserved += reserved
        e.work = max(0.0, e.work + work)
        e.kv_tokens += kv
        if healthy is not None:
            e.healthy = healthy
        if external_reqs is not None:
            e.external_reqs = external_reqs
        self._changed(e)

    # picks -------------------------------------------------------------------
    def least_loaded(
        self, cls: int, kv: int, avoid: AbstractSet[str] = frozenset(), exclude: str | None = None
    ) -> EngineState | None:
        """Engine with the least outstanding work that can take a job now."""
        heap = self._heaps[cls]
        engines = self.engines
        popped = []
        found = None
        tries = 0
        while heap:
            entry = heap[0]
            e = engines.get(entry[4])
            if e is None or e.version != entry[3] or e.free(cls) <= 0:
                heapq.heappop(heap)  # stale
                continue
            popped.append(heapq.heappop(heap))
            if e.name != exclude and e.name not in avoid and e.fits(kv, cls):
                found = e
                break
            tries += 1
            if tries > 16 + len(avoid):
                break
        for entry in popped:
            heapq.heappush(heap, entry)
        return found

    # internals ---------------------------------------------------------------
    def _count(self, e: EngineState, sign: int) -> None:
        self.free[0] += sign * e.free(LATENCY)
        self.free[1] += sign * e.free(THROUGHPUT)

    def _changed(self, e: EngineState) -> None:
        e.version += 1
        self._count(e, +1)
        key = e.key
        for cls in (LATENCY, THROUGHPUT):
            if e.free(cls) > 0:
                heap = self._heaps[cls]
                heapq.heappush(heap, (key, e.inflight, e.order, e.version, e.name))
                if len(heap) > 8 * len(self.engines) + 64:
                    self._rebuild(cls)

    def _rebuild(self, cls: int) -> None:
        heap = [
            (e.key, e.inflight, e.order, e.version, e.name)
            for e in self.engines.values()
            if e.free(cls) > 0
        ]
        heapq.heapify(heap)
        self._heaps[cls][:] = heap
