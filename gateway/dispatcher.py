"""The async side of scheduling: feeds events to the pure policy, executes its decisions.

Every request that goes to an engine (plain or semantic) becomes a ``Job`` and
waits here until the policy dispatches it; the gateway therefore holds the
queue and engines only ever see a bounded amount of in-flight work. Engine
calls are retried on another engine for retryable failures that happen before
the first token (``retry_budget``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from backends.base import (
    EngineCall,
    EngineConnectFailed,
    EngineFailure,
    EngineLoad,
    EngineRejected,
    EngineTimeout,
    EngineUnreachable,
    Usage,
)
from common.errors import EngineError, GatewayTimeout, ParrotError, ServiceUnavailable
from common.types import JSON

from .engines import EnginePool, EngineState
from .metrics import Metrics
from .policy import Dispatch, Job, Policy
from .tracing import Tracing

log = logging.getLogger("parrot.scheduler")
T = TypeVar("T")


@dataclass
class Outcome:
    """A finished engine call: the response (or None for streams) and where it ran."""

    engine: str
    body: JSON | None
    usage: Usage | None
    queued_s: float
    run_s: float
    ttft_s: float | None = None  # call start to first generated token (streamed calls)


class Restart:
    """Marker yielded by a restartable stream: discard what came so far."""


RESTART = Restart()


class EngineRejectedError(ParrotError):
    """The engine refused the request as invalid: pass its status and message on."""

    type = "invalid_request_error"
    code = "engine_rejected"

    def __init__(self, failure: EngineRejected) -> None:
        super().__init__(str(failure))
        self.status = failure.status or 400
        body = failure.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            self.param = body["error"].get("param")
            self.code = body["error"].get("code") or self.code


def has_output(chunk: JSON) -> bool:
    if "meta_info" in chunk:  # SGLang /generate: every streamed item carries output so far
        return True
    for c in chunk.get("choices") or ():
        delta = c.get("delta") or {}
        if c.get("text") or delta.get("content") or delta.get("tool_calls") or c.get("finish_reason"):
            return True
        if delta.get("reasoning_content"):
            return True
    return bool(chunk.get("usage"))


def no_engine() -> ServiceUnavailable:
    return ServiceUnavailable("no engine available", code="no_engine",
                              headers={"Retry-After": "2"})


def overloaded(why: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"gateway over capacity: {why}; retry later", code="overloaded",
                              headers={"Retry-After": "1"})


async def _numbered(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1


def _attempt_failed(span: Any, exc: EngineFailure, retry: bool) -> None:
    span.set_attributes({"parrot.outcome": "retry" if retry else "failed",
                         "error.type": type(exc).__name__})
    if exc.status is not None:
        span.set_attribute("http.response.status_code", exc.status)


def _usage_attributes(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {"gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "parrot.tokens.cached": usage.cached_tokens}


def map_failure(exc: EngineFailure) -> ParrotError:
    if isinstance(exc, EngineRejected):
        return EngineRejectedError(exc)
    if isinstance(exc, EngineUnreachable):
        return ServiceUnavailable(f"engine unavailable: {exc}", code="engine_unavailable")
    if isinstance(exc, EngineTimeout):
        return GatewayTimeout(f"engine timed out: {exc}")
    return EngineError(f"engine failed: {exc}")


class Dispatcher:
    def __init__(
        self,
        policy: Policy,
        pool: EnginePool,
        metrics: Metrics,
        *,
        retry_budget: int = 2,
        max_queued: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.policy = policy
        self.tracing = tracing or Tracing()
        self.pool = pool
        self.metrics = metrics
        self.retry_budget = retry_budget
        self.max_queued = max_queued  # plain requests waiting here (None: no bound)
        self.clock = clock
        self._waiting: dict[str, asyncio.Future[Dispatch]] = {}
        self._running: dict[str, str] = {}  # job id -> engine
        self._pump_due: asyncio.AbstractEventLoop | None = None  # a pass is due in this loop
        self._added: set[str] = set()
        self._queued_by_request: dict[str, str] = {}  # request id -> its job waiting here
        pool.on_rotation.append(self._on_rotation)
        pool.on_load.append(self._on_load)
        for state in pool.states.values():
            if state.healthy:
                self._on_rotation(state)

    # -- events from the engine pool ------------------------------------------------
    def _on_rotation(self, state: EngineState) -> None:
        now = self.clock()
        if state.healthy and state.id not in self._added:
            self.policy.add_engine(state.id, state.capacity, state.kv_capacity_tokens, now,
                                   chunk_tokens=state.chunk_tokens)
            self._added.add(state.id)
        elif state.id in self._added:
            self.policy.set_healthy(state.id, state.healthy, now)
        self.metrics.engine_healthy.labels(state.id).set(1 if state.healthy else 0)
        if not self.pool.healthy():
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(no_engine())
        self._pump()

    def _on_load(self, state: EngineState, load: EngineLoad) -> None:
        if state.id in self._added:
            self.policy.on_load(
                state.id, load.num_reqs, load.num_waiting_reqs, load.num_tokens, self.clock()
            )

    # -- queue ------------------------------------------------------------------------
    async def acquire(self, job: Job) -> Dispatch:
        """Queue ``job`` and wait until the policy gives it an engine."""
        if not self.pool.healthy():
            raise no_engine()
        if self.max_queued is not None and job.session is None and \
                len(self._waiting) >= self.max_queued:
            # Refused before anything was sent: the client may retry. Semantic work, once
            # accepted, is never refused here; it waits its turn.
            raise overloaded(f"{len(self._waiting)} requests already wait for an engine")
        fut: asyncio.Future[Dispatch] = asyncio.get_running_loop().create_future()
        self._waiting[job.id] = fut
        request = job.id.rsplit(":", 1)[0]
        self._queued_by_request[request] = job.id
        self.policy.submit(job, self.clock())
        self._pump()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.finish(job.id, ok=False)
            else:
                self.policy.cancel(job.id, self.clock())
            raise
        finally:
            self._waiting.pop(job.id, None)
            if self._queued_by_request.get(request) == job.id:
                del self._queued_by_request[request]

    def set_share(self, share: float) -> None:
        """This replica's fraction of every engine (1 / live replicas, gateway/replicas.py)."""
        self.policy.set_share(share, self.clock())
        self._pump()

    def queued(self) -> int:
        """Requests waiting here for an engine."""
        return len(self._waiting)

    def set_group(self, request_id: str, group: str | None) -> None:
        """Put a request still queued here into task group ``group`` (its siblings'
        consumer registered after it was queued)."""
        job_id = self._queued_by_request.get(request_id)
        if job_id is not None:
            self.policy.set_group(job_id, group, self.clock())
            self._pump()

    def prefill_done(self, job_id: str, observed: bool = True) -> None:
        self.policy.on_prefill_done(job_id, self.clock(), observed)
        self._pump()

    def finish(self, job_id: str, *, cached_tokens: int | None = None, ok: bool = True) -> None:
        engine = self._running.pop(job_id, None)
        if engine is not None:
            self.metrics.child(self.metrics.inflight, engine).dec()
        self.policy.on_finish(job_id, self.clock(), cached_tokens=cached_tokens, ok=ok)
        self._pump()

    def _pump(self) -> None:
        """Schedule once at the end of this loop iteration, however many events asked:
        a burst (a map stage queued, a batch of finishes) costs one pass of the policy,
        not one per event (each pass may try dozens of queued jobs that do not fit yet)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (shutdown, sync tests): at once
            self._pump_now()
            return
        if self._pump_due is loop:
            return  # already due in this loop (one due in a loop that stopped never runs)
        self._pump_due = loop
        loop.call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self._pump_due = None
        decisions = self.policy.schedule(self.clock())
        for d in decisions:
            fut = self._waiting.get(d.job_id)
            if fut is None or fut.done():
                # The waiter went away between submit and dispatch: give the slot back.
                self.policy.on_finish(d.job_id, self.clock(), ok=False)
                continue
            self._running[d.job_id] = d.engine
            self.metrics.child(self.metrics.inflight, d.engine).inc()
            fut.set_result(d)
        self.metrics.queued.set(self.policy.queued())

    # -- execution ----------------------------------------------------------------------
    async def _attempts(self, job: Job) -> AsyncIterator[tuple[Dispatch, float]]:
        avoid: set[str] = set(job.avoid)
        objective = "latency" if job.latency_critical else "throughput"
        for attempt in range(self.retry_budget + 1):
            t0 = self.clock()
            with self.tracing.span("parrot.queue", {
                "parrot.attempt": attempt + 1, "parrot.objective": objective,
                "parrot.task_group": job.group, "parrot.tenant": job.tenant,
            }) as span:
                d = await self.acquire(replace(job, avoid=frozenset(avoid)) if avoid else job)
                span.set_attributes({"parrot.engine": d.engine, "parrot.priority": d.priority})
            self.metrics.child(self.metrics.queue_wait, objective).observe(self.clock() - t0)
            yield d, t0
            avoid.add(d.engine)
            if attempt < self.retry_budget:
                self.metrics.retries.inc()

    def _call_for(self, call: EngineCall, d: Dispatch, attempt: int, span: Any) -> EngineCall:
        # A retry gets its own rid: the engine may still be running (or aborting) the
        # attempt whose connection broke, and SGLang refuses a rid that is in flight.
        # The headers carry the attempt span's trace context (tracing off: the client's).
        return replace(call, priority=d.priority if call.priority is None else call.priority,
                       rid=call.rid if attempt == 0 else f"{call.rid}-retry{attempt}",
                       headers=self.tracing.headers(span))

    def _attempt_span(self, d: Dispatch, attempt: int) -> Any:
        return self.tracing.span("parrot.engine", {"parrot.engine": d.engine, "parrot.attempt": attempt + 1},
                                 client=True)

    def _succeeded(self, span: Any, job: Job, d: Dispatch, attempt: int, usage: Usage | None) -> None:
        """The attempt's span, and the request's (or its run's), get the outcome."""
        if not self.tracing.enabled:
            return
        attrs = _usage_attributes(usage)
        span.set_attributes({"parrot.outcome": "ok", "http.response.status_code": 200, **attrs})
        self.tracing.annotate({
            "parrot.engine": d.engine, "parrot.retry_count": attempt, "parrot.task_group": job.group,
            "parrot.objective": "latency" if job.latency_critical else "throughput", **attrs,
        })

    async def _fail(self, d: Dispatch, exc: EngineFailure) -> None:
        self.metrics.engine_errors.labels(d.engine, type(exc).__name__).inc()
        try:  # the engine's state first, so the slot freed below is not given to it if dead
            if isinstance(exc, EngineConnectFailed):
                self.pool.record_failure(d.engine, fatal=True)
            elif isinstance(exc, EngineUnreachable):
                await self.pool.check_broken(d.engine)  # dead, or one broken connection?
            elif not isinstance(exc, EngineRejected):
                self.pool.record_failure(d.engine)
        finally:
            self.finish(d.job_id, ok=isinstance(exc, EngineRejected))

    async def complete(self, job: Job, call: EngineCall) -> Outcome:
        """Run a non-streaming call, retrying on another engine when that is safe."""
        last: EngineFailure | None = None
        loop = asyncio.get_running_loop()
        async for attempt, (d, t0) in _numbered(self._attempts(job)):
            started = self.clock()
            engine = self.pool.get(d.engine).engine
            # Nothing streams back before the end: the policy's estimate of the first
            # token stands in for it (prefill budget, warm-up followers).
            eta = loop.call_later(d.prefill_eta_s, self.prefill_done, d.job_id, False)
            with self._attempt_span(d, attempt) as span:
                try:
                    body = await engine.complete(self._call_for(call, d, attempt, span))
                except EngineFailure as exc:
                    await self._fail(d, exc)
                    last = exc
                    retry = exc.retryable and len(self.pool.healthy()) > 0
                    _attempt_failed(span, exc, retry)
                    if retry:
                        log.warning("request %s failed on %s (%s); retrying", job.id, d.engine, exc)
                        continue
                    raise map_failure(exc) from exc
                except BaseException:
                    self.finish(d.job_id, ok=False)
                    raise
                finally:
                    eta.cancel()
                usage = Usage.of_chunk(body)
                self._succeeded(span, job, d, attempt, usage)
            self.pool.record_success(d.engine)
            self.finish(d.job_id, cached_tokens=usage.cached_tokens if usage else None)
            return Outcome(d.engine, body, usage, started - t0, self.clock() - started)
        assert last is not None
        raise map_failure(last)

    async def stream(
        self,
        job: Job,
        call: EngineCall,
        on_start: Callable[[str, float], Any] | None = None,
        *,
        restartable: bool = False,
    ) -> AsyncIterator[JSON | Restart]:
        """Run a streaming call; retries happen only before the first chunk, unless
        ``restartable`` (nothing reached the client yet: the caller assembles the
        chunks), in which case a retry mid-stream yields ``RESTART`` first.

        The final chunk carries usage (the SGLang client always asks for it);
        the caller decides whether to forward it.
        """
        last: EngineFailure | None = None
        async for attempt, (d, t0) in _numbered(self._attempts(job)):
            started = self.clock()
            engine = self.pool.get(d.engine).engine
            first = True
            usage: Usage | None = None
            with self._attempt_span(d, attempt) as span:
                try:
                    prefilled = False
                    async for chunk in engine.stream(self._call_for(call, d, attempt, span)):
                        if first:
                            first = False
                            if on_start is not None:
                                on_start(d.engine, started - t0)
                        if not prefilled and has_output(chunk):
                            # The first generated token, not the role-only opening chunk
                            # some servers send at once, marks the end of prefill.
                            prefilled = True
                            self.pool.record_success(d.engine)
                            self.prefill_done(job.id)
                            self.metrics.ttft.observe(self.clock() - t0)
                            span.add_event("first_token")
                        usage = Usage.of_chunk(chunk) or usage
                        yield chunk
                except EngineFailure as exc:
                    await self._fail(d, exc)
                    last = exc
                    retry = (first or restartable) and exc.retryable and len(self.pool.healthy()) > 0
                    _attempt_failed(span, exc, retry)
                    if retry:
                        if not first:
                            yield RESTART
                        continue
                    raise map_failure(exc) from exc
                except BaseException:
                    self.finish(d.job_id, ok=False)
                    raise
                self._succeeded(span, job, d, attempt, usage)
            self.pool.record_success(d.engine)
            self.finish(d.job_id, cached_tokens=usage.cached_tokens if usage else None)
            return
        assert last is not None
        raise map_failure(last)

