"""Drive the pure engine in (scaled) wall time on an asyncio loop.

Virtual engine time runs ``1 / time_scale`` times faster than the wall clock.
Each step keeps the engine busy for its cost-model duration; the loop sleeps
until that step's scaled end, then hands the step's tokens to the per-request
queues. Requests arriving meanwhile join at the next step, as on a GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine import Engine, EngineRequest, Event


@dataclass
class Handle:
    """One submitted request: its events arrive on ``queue``."""

    rid: str
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    submitted_wall: float = 0.0


class Runner:
    def __init__(
        self,
        engine: Engine,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.engine = engine
        self.time_scale = time_scale
        self._clock = clock
        self._w0 = clock()
        self._busy_until = 0.0  # virtual time at which the current step ends
        self._handles: dict[str, Handle] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = 0
        self.busy_virtual_s = 0.0

    # -- virtual clock -------------------------------------------------------
    def now(self) -> float:
        """Engine time: wall time since start, unscaled, never behind the busy GPU."""
        if self.time_scale == 0:
            return self._busy_until
        return max((self._clock() - self._w0) / self.time_scale, self._busy_until)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- requests ------------------------------------------------------------
    def submit(self, req: EngineRequest) -> Handle:
        """Queue ``req``; raises the engine's ValueError for bad or oversized requests."""
        if req.rid in self._handles:
            raise ValueError(f"duplicate rid {req.rid!r}")
        self.engine.add(req, self.now())
        h = Handle(req.rid, submitted_wall=self._clock())
        self._handles[req.rid] = h
        self._wake.set()
        return h

    def is_active(self, rid: str) -> bool:
        """Submitted and not yet finished or aborted."""
        return rid in self._handles

    def abort(self, rid: str) -> bool:
        found = self.engine.abort(rid)
        h = self._handles.pop(rid, None)
        if h is not None:
            h.queue.put_nowait(Event(rid, "aborted"))
        self._wake.set()
        return found

    def abort_all(self) -> int:
        rids = list(self._handles)
        for rid in rids:
            self.abort(rid)
        return len(rids)

    # -- loop ------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if not self.engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                continue
            start = self.now()
            result = self.engine.step(start)
            self.steps += 1
            self.busy_virtual_s += result.duration
            self._busy_until = start + result.duration
            if self.time_scale > 0:
                delay = self._w0 + self._busy_until * self.time_scale - self._clock()
                await asyncio.sleep(max(delay, 0.0))
            else:
                await asyncio.sleep(0)
            for ev in result.events:
                h = self._handles.get(ev.rid)
                if h is None:
                    continue
                h.queue.put_nowait(ev)
                if ev.kind in ("finished", "aborted"):
                    del self._handles[ev.rid]
