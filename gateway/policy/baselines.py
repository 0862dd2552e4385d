"""Baseline policies for comparison: what a plain load-balancing router does.

FIFO queue, capacity-bounded engines, priority 0 for everything, no prefix,
group or objective awareness. Same interface as ``policy.Scheduler``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .engines import LATENCY, EngineState, EngineTable
from .types import Dispatch, Job, SchedulerConfig

__all__ = ["LeastLoadedPolicy", "RoundRobinPolicy"]


class _FifoPolicy:
    """Shared body of the baselines: FIFO queue, capacity-bounded engines, no
    priorities, no prefix or group awareness."""

    name = "fifo"

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._engines = EngineTable(0.0, self.config.external_request_work)
        self._queue: deque[str] = deque()
        self._jobs: dict[str, Job] = {}
        self._where: dict[str, str] = {}
        self._dispatched = 0

    def add_engine(
        self,
        engine: str,
        capacity: int,
        kv_capacity_tokens: int | None,
        now: float,
        chunk_tokens: int | None = None,
    ) -> None:
        self._engines.add(engine, self.config.engine_capacity(capacity), kv_capacity_tokens)

    def set_share(self, share: float, now: float) -> None:
        self._engines.set_share(share)

    def remove_engine(self, engine: str, now: float) -> list[str]:
        e = self._engines.remove(engine)
        if e is None:
            return []
        for jid in e.jobs:
            self._where.pop(jid, None)
            self._jobs.pop(jid, None)
        return sorted(e.jobs)

    def set_healthy(self, engine: str, healthy: bool, now: float) -> None:
        e = self._engines.get(engine)
        if e is not None:
            self._engines.update(e, healthy=healthy)

    def on_load(
        self, engine: str, num_reqs: int, num_waiting: int, num_tokens: int, now: float
    ) -> None:
        e = self._engines.get(engine)
        if e is not None:
            self._engines.update(e, external_reqs=max(0, num_reqs + num_waiting - e.inflight))

    def submit(self, job: Job, now: float) -> None:
        if job.id in self._jobs:
            raise ValueError(f"job {job.id!r} already submitted")
        self._jobs[job.id] = job
        self._queue.append(job.id)

    def cancel(self, job_id: str, now: float) -> bool:
        if job_id in self._where:
            self.on_finish(job_id, now, ok=False)
            return True
        return self._jobs.pop(job_id, None) is not None  # lazily skipped in the queue

    def on_prefill_done(self, job_id: str, now: float, observed: bool = True) -> None:
        pass

    def set_group(self, job_id: str, group: str | None, now: float) -> None:
        pass  # baselines know no groups

    def on_finish(
        self, job_id: str, now: float, cached_tokens: int | None = None, ok: bool = True
    ) -> None:
        engine = self._where.pop(job_id, None)
        job = self._jobs.pop(job_id, None)
        e = self._engines.get(engine or "")
        if e is not None and job is not None and job_id in e.jobs:
            e.jobs.discard(job_id)
            self._engines.update(e, inflight=-1, work=-float(job.max_tokens))

    def schedule(self, now: float) -> list[Dispatch]:
        out: list[Dispatch] = []
        while self._queue and self._engines.free[LATENCY] > 0:
            jid = self._queue[0]
            job = self._jobs.get(jid)
            if job is None or jid in self._where:
                self._queue.popleft()
                continue
            e = self._pick(job)
            if e is None:
                break  # FIFO: the head blocks the line, as a plain router queue does
            self._queue.popleft()
            self._where[jid] = e.name
            e.jobs.add(jid)
            self._engines.update(e, inflight=1, work=float(job.max_tokens))
            self._dispatched += 1
            out.append(Dispatch(jid, e.name, 0, 0))
        return out

    def queued(self) -> int:
        return len(self._queue)  # includes cancelled ids not yet skipped: an upper bound

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "queued": sum(1 for j in self._queue if j in self._jobs and j not in self._where),
            "inflight": len(self._where),
            "dispatched": self._dispatched,
            "engines": {
                e.name: {"healthy": e.healthy, "capacity": e.capacity, "inflight": e.inflight}
                for e in self._engines.engines.values()
            },
        }

    def _candidates(self, job: Job) -> list[EngineState]:
        if job.pin_engine is not None:
            e = self._engines.get(job.pin_engine)
            return [e] if e is not None else []
        engines = list(self._engines.engines.values())
        allowed = [e for e in engines if e.name not in job.avoid and e.healthy]
        return allowed or engines

    def _pick(self, job: Job) -> EngineState | None:
        raise NotImplementedError


class RoundRobinPolicy(_FifoPolicy):
    """Next engine in turn that has a free slot."""

    name = "round_robin"

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        super().__init__(config)
        self._turn = 0

    def _pick(self, job: Job) -> EngineState | None:
        cands = self._candidates(job)
        for k in range(len(cands)):
            e = cands[(self._turn + k) % len(cands)]
            if e.free(LATENCY) > 0:
                self._turn = (self._turn + k + 1) % len(cands)
                return e
        return None


class LeastLoadedPolicy(_FifoPolicy):
    """Engine with the fewest requests in flight."""

    name = "least_loaded"

    def _pick(self, job: Job) -> EngineState | None:
        free = [e for e in self._candidates(job) if e.free(LATENCY) > 0]
        return min(free, key=lambda e: (e.load, e.order)) if free else None
