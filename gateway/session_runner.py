"""Running semantic-variable requests: register a request in its session's graph
(Redis), wait for its inputs, analyse it, run it on the engines, and settle its output.

A request is a node of its session's dataflow graph; variables are its edges.
Whatever happens — engine failure, timeout, cancellation — the output variable
ends ``ready`` or ``failed``, so consumers never hang: a failed input fails every
transitive consumer with ``upstream_failed`` naming the variable.

This module knows nothing of HTTP: it takes a `Submission` (plain fields) and
hands back tasks, engine answers and chunk streams. ``session_http.py`` turns
requests into submissions and results into responses; another driver (a work
queue) could call the same methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from analysis.placeholders import (
    input_names,
    scan_messages,
    scan_prompt,
    substitute_messages,
    substitute_prompt,
)
from common.errors import (
    DependencyCycle,
    GatewayTimeout,
    NotFound,
    ParrotError,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamFailed,
)
from common.types import JSON, Route

from .completion import Completions, RequestContext, prompt_shape
from .metrics import Metrics
from .session_graph import cycle_check, graph_of, graph_view
from .settings import Settings
from .store import RequestRecord, SessionStore, Variable
from .tracing import Tracing

log = logging.getLogger("parrot.sessions")

PREFIX_HASH_BLOCKS = 128
MAX_TRACKED_SESSIONS = 100_000
STORE_RETRY_S = 30.0  # how long a finished request retries saving its result
OUTPUT_PARAM = "x-parrot-output"  # where a second producer is reported (the header)
T = TypeVar("T")


@dataclass(frozen=True)
class Submission:
    """One semantic request as the runner takes it, whoever received it."""

    tenant: str
    session: str
    route: Route
    body: JSON
    request_id: str
    output: str | None = None
    criteria: str = "latency"
    timeout_s: float = 600.0
    weight: float = 1.0


@dataclass
class Run:
    """A registered request and what running it needs."""

    rec: RequestRecord
    route: Route
    body: JSON
    ctx: RequestContext
    deadline: float  # absolute epoch time: the session deadline of this request


async def _persist(write: Callable[[], Awaitable[T]], within_s: float = STORE_RETRY_S) -> T:
    """Run a store write, retrying while Redis is unreachable (a restart, a failover):
    a result computed by an engine is not thrown away for a short outage."""
    deadline = time.monotonic() + within_s
    delay = 0.05
    while True:
        try:
            return await write()
        except ServiceUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def choice_text(route: Route, body: JSON) -> str:
    choices = body.get("choices") or []
    if not choices:
        return ""
    c0 = choices[0]
    if route == "chat":
        return str((c0.get("message") or {}).get("content") or "")
    return str(c0.get("text") or "")


def chunk_text(route: Route, chunk: JSON) -> str:
    out = []
    for c in chunk.get("choices") or []:
        if c.get("index", 0) != 0:
            continue
        if route == "chat":
            out.append(str((c.get("delta") or {}).get("content") or ""))
        else:
            out.append(str(c.get("text") or ""))
    return "".join(out)


def _record_attributes(rec: RequestRecord) -> dict[str, Any]:
    return {"parrot.session.id": rec.session, "parrot.session.request.id": rec.id,
            "parrot.tenant": rec.tenant, "parrot.output": rec.output, "parrot.inputs": rec.inputs,
            "parrot.criteria": rec.criteria}


def _run_attributes(run: Run, replica: str) -> dict[str, Any]:
    """The run span's own attributes; the dispatcher adds the engine, objective, task
    group, tokens and retries it ends up with."""
    return {**_record_attributes(run.rec), "parrot.request.id": run.ctx.request_id,
            "parrot.replica": replica}


class SessionRunner:
    """Registers, runs, cancels and drains the semantic requests of this replica."""

    def __init__(
        self, settings: Settings, store: SessionStore, completions: Completions, metrics: Metrics,
        *, tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.completions = completions
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.replica = "gw-" + uuid.uuid4().hex[:8]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._by_session: dict[tuple[str, str], set[asyncio.Task[Any]]] = {}
        # When each session started, as this replica saw it (bounded LRU): the
        # scheduler ranks the steps of older applications first.
        self._started: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- submission ------------------------------------------------------------------
    async def register(self, sub: Submission) -> Run:
        """Check the request, record it in its session's graph (refusing cycles, second
        producers and limits) and return what running it needs."""
        body = sub.body
        if sub.route == "chat":
            placeholders = scan_messages(body["messages"])
        else:
            placeholders = scan_prompt(body["prompt"])
        if len(placeholders) > self.settings.max_placeholders:
            raise PayloadTooLarge(
                f"{len(placeholders)} placeholders; the limit is {self.settings.max_placeholders}",
                code="too_many_placeholders",
            )
        inputs = input_names(placeholders)
        if sub.output is not None and sub.output in inputs:
            raise DependencyCycle([sub.output, "request", sub.output])
        self.completions.resolve_model(body)
        now = time.time()
        rec = RequestRecord(
            id="pr-" + uuid.uuid4().hex[:16],
            tenant=sub.tenant,
            session=sub.session,
            inputs=inputs,
            output=sub.output,
            criteria=sub.criteria,
            status="waiting",
            created_at=now,
            replica=self.replica,
            max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        )
        deadline = now + sub.timeout_s
        with self.tracing.span("parrot.register", _record_attributes(rec)):
            await self.store.register_request(
                rec, validate=cycle_check(rec, OUTPUT_PARAM), deadline=deadline
            )
        self.tracing.annotate({"parrot.session.request.id": rec.id})
        ctx = RequestContext(
            request_id=sub.request_id, tenant=sub.tenant, session=sub.session,
            weight=sub.weight, app_started=self._session_started(rec),
        )
        return Run(rec, sub.route, body, ctx, deadline)

    def start(self, run: Run, *, detached: bool = False) -> asyncio.Task[JSON]:
        """Run it in a task of this replica; the task's result is the engine's answer.
        ``detached``: the run outlives the HTTP answer (``X-Parrot-Async``); traced, it is
        a trace of its own, linked to the submitting request's span."""
        if not self.tracing.enabled:
            return self._spawn(run.rec, self._run(run))
        span = self.tracing.run_span("parrot.run", _run_attributes(run, self.replica), detached=detached)
        return self._spawn(run.rec, self._traced(run, span, self._run(run)))

    async def _traced(self, run: Run, span: Any, coro: Awaitable[T]) -> T:
        """``coro`` with ``span`` as the current span: the run's waits, queueing, engine
        attempts and output write are its children."""
        error: BaseException | None = None
        try:
            with self.tracing.using(span):
                return await coro
        except BaseException as exc:
            error = exc
            raise
        finally:
            rec = run.rec
            self.tracing.end_run(span, {"parrot.status": rec.status}, error,
                                 failed=rec.error if rec.status == "failed" else None)

    def _session_started(self, rec: RequestRecord) -> float:
        key = (rec.tenant, rec.session)
        started = self._started.pop(key, rec.created_at)
        self._started[key] = started
        while len(self._started) > MAX_TRACKED_SESSIONS:
            self._started.popitem(last=False)
        return started

    def _spawn(self, rec: RequestRecord, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"parrot:{rec.id}")
        key = (rec.tenant, rec.session)
        self._tasks.add(task)
        self._by_session.setdefault(key, set()).add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            s = self._by_session.get(key)
            if s is not None:
                s.discard(t)
                if not s:
                    self._by_session.pop(key, None)
            if not t.cancelled() and t.exception() is not None and not isinstance(
                t.exception(), ParrotError
            ):
                log.error("request %s crashed: %r", rec.id, t.exception())

        task.add_done_callback(done)
        return task

    # -- execution -------------------------------------------------------------------
    async def _inputs(self, rec: RequestRecord, deadline: float) -> dict[str, str]:
        """Wait for every input; raise UpstreamFailed/GatewayTimeout when that cannot happen."""
        if not rec.inputs:
            return {}
        remaining = deadline - time.time()
        with self.tracing.span("parrot.wait_inputs", {"parrot.inputs": rec.inputs}) as span:
            states = await self.store.wait_variables(rec.tenant, rec.session, rec.inputs,
                                                     max(0.0, remaining))
            if span.is_recording():
                span.set_attribute("parrot.inputs.not_ready", [
                    n for n in rec.inputs if (v := states.get(n)) is None or v.status != "ready"])
        values: dict[str, str] = {}
        for name in rec.inputs:
            var: Variable | None = states.get(name)
            if var is None:
                raise UpstreamFailed(f"input '{name}' is gone (session deleted)", param=name)
            if var.status == "failed":
                raise UpstreamFailed(
                    f"input variable '{name}' failed: {var.error or 'unknown error'}", param=name
                )
            if var.status != "ready":
                raise GatewayTimeout(
                    f"input variable '{name}' was not ready by the session deadline", param=name,
                    code="deadline_exceeded",
                )
            values[name] = var.value or ""
        return values

    async def _analyse(self, rec: RequestRecord) -> tuple[bool, str | None]:
        """Deduced objective and task group of ``rec`` from its session's graph.

        Both need other requests only when someone consumes ``rec``'s output (a
        latency request stays latency; a group needs a common consumer), so the
        whole graph is read only then.
        """
        if rec.criteria == "latency":
            out = await self.store.get_variable(rec.tenant, rec.session, rec.output) if rec.output else None
            if out is None or not out.consumers:
                return True, None
        graph = graph_of(await self.store.list_requests(rec.tenant, rec.session))
        objective = graph.deduce_objectives().get(rec.id, rec.criteria)  # type: ignore[arg-type]
        return objective == "latency", graph.task_groups().get(rec.id)

    @staticmethod
    def _substituted(route: Route, body: JSON, values: dict[str, str]) -> JSON:
        out = dict(body)
        if route == "chat":
            out["messages"] = substitute_messages(body["messages"], values)
        else:
            out["prompt"] = substitute_prompt(body["prompt"], values)
        return out

    async def _prepare(self, run: Run) -> JSON:
        """Wait for the inputs, substitute them, analyse the request and record (before
        it is handed to the scheduler) the objective and group it will run with."""
        rec, ctx = run.rec, run.ctx
        values = await self._inputs(rec, run.deadline)
        engine_body = self._substituted(run.route, run.body, values)
        ctx.latency_critical, ctx.group = await self._analyse(rec)
        if not self.settings.task_groups:
            ctx.group = None
        ctx.request_id = rec.id
        shape = prompt_shape(run.route, engine_body, self.settings.prefix_block_bytes)
        ctx.prompt = shape
        rec.status, rec.ready_at = "queued", time.time()
        rec.prompt_tokens = self.completions.estimate.tokens(shape.nbytes)
        rec.prefix_hashes = list(shape.hashes[:PREFIX_HASH_BLOCKS])
        rec.criteria_effective = "latency" if ctx.latency_critical else "throughput"
        rec.group = ctx.group
        await self.store.save_request(rec)
        return engine_body

    async def _fail(self, rec: RequestRecord, exc: BaseException) -> None:
        if isinstance(exc, ParrotError):
            reason = f"{exc.code}: {exc.message}"
        elif isinstance(exc, asyncio.CancelledError):
            reason = "cancelled: request cancelled"
        else:
            reason = f"internal_error: {exc!r}"
        if isinstance(exc, UpstreamFailed):
            reason = f"upstream_failed: {exc.message}"
        rec.status = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
        rec.finished_at, rec.error = time.time(), reason
        try:
            if rec.output:
                output = rec.output
                with self.tracing.span("parrot.write_output", {
                        "parrot.variable": output, "parrot.variable.status": "failed"}):
                    failed = await _persist(lambda: self.store.fail_variable(
                        rec.tenant, rec.session, output, reason, record=rec))
                if failed:
                    self.metrics.variables.labels("failed").inc()
            else:
                await _persist(lambda: self.store.save_request(rec))
        except ParrotError:
            log.warning("could not record failure of %s (state store down)", rec.id)

    async def _finish(self, rec: RequestRecord, text: str, engine: str, usage: Any,
                      started: float) -> None:
        rec.status, rec.engine, rec.started_at, rec.finished_at = "done", engine, started, time.time()
        if usage is not None:
            rec.cached_tokens = usage.cached_tokens
            rec.completion_tokens = usage.completion_tokens
            rec.prompt_tokens = usage.prompt_tokens
        if rec.output:
            output = rec.output
            with self.tracing.span("parrot.write_output", {
                    "parrot.variable": output, "parrot.variable.status": "ready",
                    "parrot.variable.bytes": len(text)}):
                await _persist(lambda: self.store.set_result(
                    rec.tenant, rec.session, output, text, record=rec))
            self.metrics.variables.labels("ready").inc()
        else:
            await _persist(lambda: self.store.save_request(rec))

    async def _run(self, run: Run) -> JSON:
        rec, route = run.rec, run.route
        try:
            engine_body = await self._prepare(run)
            t0 = time.time()
            remaining = run.deadline - t0
            if remaining <= 0:
                raise GatewayTimeout("session deadline passed", code="deadline_exceeded")
            try:
                outcome = await asyncio.wait_for(
                    self.completions.complete(route, engine_body, run.ctx), timeout=remaining
                )
            except asyncio.TimeoutError as exc:
                raise GatewayTimeout("session deadline passed while running",
                                     code="deadline_exceeded") from exc
            assert outcome.body is not None
            started = t0 + outcome.queued_s
            rec.first_token_at = None if outcome.ttft_s is None else t0 + outcome.ttft_s
            await self._finish(rec, choice_text(route, outcome.body), outcome.engine,
                               outcome.usage, started)
            return outcome.body
        except BaseException as exc:
            await asyncio.shield(self._fail(rec, exc))
            raise

    async def open_stream(self, run: Run) -> AsyncIterator[JSON]:
        """Hold until the inputs are ready (errors until then raise here), then return the
        engine's chunks. The engine work runs in a task that outlives a reader who stops
        early when other requests need its output."""
        rec, route = run.rec, run.route
        span = self.tracing.run_span("parrot.run", _run_attributes(run, self.replica), detached=False)
        try:
            with self.tracing.using(span):
                engine_body = await self._prepare(run)
        except BaseException as exc:
            with self.tracing.using(span):
                await asyncio.shield(self._fail(rec, exc))
            self.tracing.end_run(span, {"parrot.status": rec.status}, exc)
            raise
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def produce() -> None:
            parts: list[str] = []
            usage_seen: list[Any] = []
            engine_seen: list[str] = []
            t0 = time.time()
            started = [t0]

            def on_start(engine: str, queued_s: float) -> None:
                engine_seen.append(engine)
                started[0] = t0 + queued_s

            try:
                async for chunk in self.completions.stream(
                    route, engine_body, run.ctx, on_start=on_start, on_usage=usage_seen.append
                ):
                    parts.append(chunk_text(route, chunk))
                    rec.first_token_at = rec.first_token_at or (time.time() if parts[-1] else None)
                    queue.put_nowait(chunk)
                await self._finish(rec, "".join(parts), engine_seen[0] if engine_seen else "",
                                   usage_seen[-1] if usage_seen else None, started[0])
                queue.put_nowait(done)
            except BaseException as exc:
                queue.put_nowait(exc)
                await asyncio.shield(self._fail(rec, exc))
                if not isinstance(exc, Exception):
                    raise

        task = self._spawn(rec, self._traced(run, span, produce()) if self.tracing.enabled else produce())

        async def chunks() -> AsyncIterator[JSON]:
            finished = False
            try:
                while True:
                    item = await queue.get()
                    if item is done:
                        finished = True
                        return
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    yield item
            finally:
                if not finished and not await self.needed(rec):
                    task.cancel()

        return chunks()

    async def needed(self, rec: RequestRecord) -> bool:
        """Is this request's output consumed by another request of the session?"""
        if not rec.output:
            return False
        try:
            var = await self.store.get_variable(rec.tenant, rec.session, rec.output)
        except ParrotError:
            return True
        return bool(var and var.consumers)

    # -- session operations ------------------------------------------------------------
    async def cancel_session(self, tenant: str, session: str) -> bool:
        tasks = list(self._by_session.get((tenant, session), ()))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return await self.store.delete_session(tenant, session)

    async def drain(self, timeout: float) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        log.info("draining %d in-flight semantic requests (timeout %.0fs)", len(tasks), timeout)
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def graph_json(self, tenant: str, session: str) -> JSON:
        records = await self.store.list_requests(tenant, session)
        if not records and not await self.store.session_exists(tenant, session):
            raise NotFound(f"session '{session}' not found", code="session_not_found")
        variables = await self.store.list_variables(tenant, session)
        return graph_view(
            session, records, variables,
            block_tokens=self.settings.prefix_block_bytes / self.completions.estimate.bytes_per_token,
            warmup_min_tokens=self.settings.warmup_min_tokens,
        )
