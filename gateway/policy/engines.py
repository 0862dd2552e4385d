"""Per-engine load bookkeeping for the policies, with O(log E) least-loaded picks.

Each engine has a hard in-flight cap (``capacity``) and a lower one for
throughput work (``thr_limit``), leaving a few slots that only
latency-critical jobs may take. With several gateway replicas each one holds
``share`` of every engine's capacity and prefill budget (``set_share``), so
together they never exceed what the engine takes. Two lazy heaps (one per class) hold the
engines with a free slot for that class, keyed by outstanding work; an entry
is valid while the engine's ``version`` is unchanged.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from hashlib import blake2b

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
    base_capacity: int = 0  # what the engine advertises (capped by config), before the share
    chunk_tokens: int = 8192  # tokens the engine prefills in one forward pass
    backlog_tokens: int = 0  # uncached prompt tokens sent and not yet prefilled
    backlog_latency: int = 0  # the part of backlog_tokens from latency-class jobs
    latency_inflight: int = 0  # latency-class jobs in flight
    latency_at: float = -math.inf  # when latency-class work was last sent here or ended
    prefilling: int = 0  # jobs in flight whose first token has not come yet
    prefilling_latency: int = 0  # the latency-class part of ``prefilling``
    apps: dict[str, int] = field(default_factory=dict)  # application -> jobs in flight
    name_hash: int = 0  # stable 64-bit hash of the name (rendezvous hashing)
    prefill_s_per_token: float = 0.0  # seconds from dispatch to first token per token ahead (learned)
    prefill_rate: float = 0.0  # uncached tokens sent per second (decaying average)
    rate_at: float = 0.0  # when prefill_rate was last updated

    def prefill_duty(self, now: float, tau: float, s_per_token: float) -> float:
        """Share of the engine's time that the prefill we sent lately needs."""
        return self.decayed_rate(now, tau) * s_per_token

    def decayed_rate(self, now: float, tau: float) -> float:
        dt = max(0.0, now - self.rate_at)
        return self.prefill_rate * math.exp(-dt / tau) if tau > 0 else 0.0

    def add_prefill(self, tokens: int, now: float, tau: float) -> None:
        self.prefill_rate = self.decayed_rate(now, tau) + (tokens / tau if tau > 0 else 0.0)
        self.rate_at = now

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
        self._share = 1.0

    @property
    def share(self) -> float:
        return self._share

    def __contains__(self, name: str) -> bool:
        return name in self.engines

    def __len__(self) -> int:
        return len(self.engines)

    def get(self, name: str) -> EngineState | None:
        return self.engines.get(name)

    def healthy_count(self) -> int:
        return sum(1 for e in self.engines.values() if e.healthy)

    # membership --------------------------------------------------------------
    def add(
        self, name: str, capacity: int, kv_capacity: int | None, chunk_tokens: int | None = None
    ) -> EngineState:
        old = self.engines.get(name)
        if old is not None:
            self._count(old, -1)
            e = old
        else:
            self._order += 1
            e = EngineState(name, 1, 1, kv_capacity, self._order, self._external_work)
            e.name_hash = int.from_bytes(blake2b(name.encode(), digest_size=8).digest(), "little")
            self.engines[name] = e
        e.base_capacity, e.kv_capacity = max(1, capacity), kv_capacity
        if chunk_tokens:
            e.chunk_tokens = chunk_tokens
        self._resize(e)
        self._changed(e)
        return e

    def set_share(self, share: float) -> None:
        """This replica's fraction of every engine (1 / live replicas)."""
        self._share = min(1.0, max(share, 1e-3))
        for e in self.engines.values():
            self._count(e, -1)
            self._resize(e)
            self._changed(e)

    def _resize(self, e: EngineState) -> None:
        capacity = max(1, int(e.base_capacity * self._share))
        thr = capacity - int(capacity * self._reserve_frac) if capacity > 1 else capacity
        e.capacity, e.thr_limit = capacity, max(1, thr)

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
