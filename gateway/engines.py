"""The set of engines: discovery of capacity and models, health checks, circuit breakers.

A slow engine is not a dead one. What takes an engine out of rotation (breaker
open for ``breaker_reset_s``, then back once a health check passes):

- a connection that cannot even be made (refused, no route): nothing listens;
- ``breaker_failures`` consecutive failures (requests or health checks) with no
  sign of life in between. A success, a stream's first token or a passed check
  resets the count, so a health probe that times out on a busy event loop while
  the engine keeps streaming does not count, and neither does one broken pooled
  connection (a keep-alive race).

Listeners hear about rotation changes and load reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from backends.base import Engine, EngineFailure, EngineLoad

log = logging.getLogger("parrot.engines")

DEFAULT_CAPACITY = 64


@dataclass
class EngineState:
    id: str
    engine: Engine
    healthy: bool = False
    models: list[str] = field(default_factory=list)
    capacity: int = DEFAULT_CAPACITY
    kv_capacity_tokens: int | None = None
    chunk_tokens: int | None = None  # the engine's chunked_prefill_size, if it says
    consecutive_failures: int = 0
    open_until: float = 0.0
    last_progress: float = 0.0  # monotonic time of the last sign of life (answer, token)
    load: EngineLoad | None = None
    known: bool = False  # info fetched at least once


async def refuses_connections(url: str, timeout: float = 1.0) -> bool:
    """Does the engine's address actively refuse a TCP connection (no process listens)?
    A timeout or anything else is not proof of death."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", port), timeout)
    except ConnectionRefusedError:
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return False


RotationListener = Callable[[EngineState], None]
LoadListener = Callable[[EngineState, EngineLoad], None]


class EnginePool:
    def __init__(
        self,
        engines: list[Engine],
        *,
        health_interval_s: float = 2.0,
        breaker_failures: int = 3,
        breaker_reset_s: float = 5.0,
        max_inflight_per_engine: int | None = None,
    ) -> None:
        self.states: dict[str, EngineState] = {e.url: EngineState(id=e.url, engine=e) for e in engines}
        self.health_interval_s = health_interval_s
        self.breaker_failures = breaker_failures
        self.breaker_reset_s = breaker_reset_s
        self.max_inflight = max_inflight_per_engine
        self.on_rotation: list[RotationListener] = []
        self.on_load: list[LoadListener] = []
        self._task: asyncio.Task[None] | None = None

    def get(self, engine_id: str) -> EngineState:
        return self.states[engine_id]

    def healthy(self) -> list[EngineState]:
        return [s for s in self.states.values() if s.healthy]

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.states.values():
            for m in s.models:
                seen.setdefault(m, None)
        return list(seen)

    async def start(self) -> None:
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="engine-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.gather(*(s.engine.aclose() for s in self.states.values()))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check_all()
            except Exception:  # keep checking whatever one round did
                log.exception("health round failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(s) for s in self.states.values()))

    async def check(self, state: EngineState) -> None:
        started = time.monotonic()
        ok = await state.engine.health()
        if not ok and state.healthy:
            if await refuses_connections(state.engine.url):
                self.record_failure(state.id, fatal=True)  # nothing listens: down now
            elif state.last_progress < started - self.health_interval_s:
                self.record_failure(state.id)  # ejects only after breaker_failures in a row
            return  # (a probe failing while requests still get answers: busy, not dead)
        if ok and not state.known:
            try:
                info = await state.engine.info()
                state.models = info.models
                if info.max_running_requests:
                    state.capacity = info.max_running_requests
                state.kv_capacity_tokens = info.max_total_tokens
                state.chunk_tokens = info.chunked_prefill_size
                state.known = True
            except EngineFailure:
                ok = False
        if self.max_inflight:
            state.capacity = min(state.capacity, self.max_inflight)
        if ok and state.open_until > time.monotonic():
            ok = False  # breaker still cooling down
        if ok:
            state.consecutive_failures = 0
            try:
                load = await state.engine.load()
            except EngineFailure:
                load = None
            if load is not None:
                state.load = load
                for fn in self.on_load:
                    fn(state, load)
        self._set_healthy(state, ok)

    def _set_healthy(self, state: EngineState, ok: bool) -> None:
        if state.healthy == ok:
            return
        state.healthy = ok
        log.warning("engine %s %s rotation", state.id, "joined" if ok else "left")
        for fn in self.on_rotation:
            fn(state)

    async def check_broken(self, engine_id: str) -> None:
        """A connection to the engine broke mid-request: if it now refuses connections the
        process is gone (eject at once); otherwise it counts as one failure."""
        if await refuses_connections(self.states[engine_id].engine.url):
            self.record_failure(engine_id, fatal=True)
        else:
            self.record_failure(engine_id)

    def record_success(self, engine_id: str) -> None:
        """A sign of life: an answer, or a stream's first token."""
        state = self.states[engine_id]
        state.consecutive_failures = 0
        state.last_progress = time.monotonic()

    def record_failure(self, engine_id: str, *, fatal: bool = False) -> None:
        """A request or health check failed on this engine; ``fatal`` (no connection could
        be made) opens the breaker at once, anything else after ``breaker_failures`` in a row."""
        state = self.states[engine_id]
        state.consecutive_failures += 1
        if fatal or state.consecutive_failures >= self.breaker_failures:
            state.open_until = time.monotonic() + self.breaker_reset_s
            state.consecutive_failures = 0
            if state.healthy:
                log.warning("engine %s: %s", engine_id, "connection refused" if fatal
                            else f"{self.breaker_failures} failures in a row")
            self._set_healthy(state, False)
