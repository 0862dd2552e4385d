"""Semantic-variable requests: parse the X-Parrot-* headers, register the request in the
session graph (Redis), and run it server-side the moment its inputs are ready.

A request is a node of its session's dataflow graph; variables are its edges.
Async requests answer at once and run in a background task of this replica;
sync requests hold the connection until their inputs are ready. Whatever
happens — engine failure, timeout, cancellation — the output variable ends
``ready`` or ``failed``, so consumers never hang: a failed input fails every
transitive consumer with ``upstream_failed`` naming the variable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from analysis.dag import CycleError, DuplicateProducer, Node, SessionGraph, estimate_cost
from analysis.placeholders import (
    input_names,
    scan_messages,
    scan_prompt,
    substitute_messages,
    substitute_prompt,
)
from analysis.prefix import prefix_groups
from common.errors import (
    BadRequest,
    Conflict,
    DependencyCycle,
    GatewayTimeout,
    NotFound,
    ParrotError,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamFailed,
)
from common.ids import is_session_id, is_variable_name
from common.serving import finished_before_disconnect
from common.types import JSON, Route

from .auth import Principal
from .completion import Completions, RequestContext, prompt_shape
from .metrics import Metrics
from .responses import CLIENT_CLOSED, primed, streaming
from .settings import Settings
from .store import RequestRecord, SessionStore, Variable

log = logging.getLogger("parrot.sessions")

H_SESSION = "x-parrot-session"
H_OUTPUT = "x-parrot-output"
H_ASYNC = "x-parrot-async"
H_CRITERIA = "x-parrot-criteria"
H_TIMEOUT = "x-parrot-timeout"
MAX_TIMEOUT_S = 86400.0
PREFIX_HASH_BLOCKS = 128
MAX_TRACKED_SESSIONS = 100_000
STORE_RETRY_S = 30.0  # how long a finished request retries saving its result
T = TypeVar("T")


@dataclass(frozen=True)
class SemanticHeaders:
    session: str
    output: str | None
    is_async: bool
    criteria: str
    timeout_s: float


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


def parse_headers(headers: Mapping[str, str], default_timeout_s: float) -> SemanticHeaders:
    session = headers.get(H_SESSION, "")
    if not is_session_id(session):
        raise BadRequest(
            "X-Parrot-Session must match [A-Za-z0-9_.-]{1,128}", param=H_SESSION, code="invalid_header"
        )
    output = headers.get(H_OUTPUT)
    if output is not None and not is_variable_name(output):
        raise BadRequest(
            "X-Parrot-Output must be a variable name [A-Za-z_][A-Za-z0-9_]{0,63}",
            param=H_OUTPUT, code="invalid_header",
        )
    raw_async = headers.get(H_ASYNC, "0").strip().lower()
    if raw_async not in ("0", "1", "true", "false", "yes", "no", ""):
        raise BadRequest("X-Parrot-Async must be 1 or 0", param=H_ASYNC, code="invalid_header")
    is_async = raw_async in ("1", "true", "yes")
    if is_async and output is None:
        raise BadRequest(
            "X-Parrot-Async needs X-Parrot-Output: an async result must go to a variable",
            param=H_ASYNC, code="invalid_header",
        )
    criteria = headers.get(H_CRITERIA, "latency").strip().lower()
    if criteria not in ("latency", "throughput"):
        raise BadRequest(
            "X-Parrot-Criteria must be 'latency' or 'throughput'", param=H_CRITERIA,
            code="invalid_header",
        )
    timeout_s = default_timeout_s
    if H_TIMEOUT in headers:
        try:
            timeout_s = float(headers[H_TIMEOUT])
        except ValueError:
            timeout_s = -1.0
        if not (0 < timeout_s <= MAX_TIMEOUT_S):
            raise BadRequest(
                f"X-Parrot-Timeout must be seconds in (0, {MAX_TIMEOUT_S:.0f}]", param=H_TIMEOUT,
                code="invalid_header",
            )
    return SemanticHeaders(session, output, is_async, criteria, timeout_s)


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


class Sessions:
    def __init__(
        self, settings: Settings, store: SessionStore, completions: Completions, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.completions = completions
        self.metrics = metrics
        self.replica = "gw-" + uuid.uuid4().hex[:8]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._by_session: dict[tuple[str, str], set[asyncio.Task[Any]]] = {}
        # When each session started, as this replica saw it (bounded LRU): the
        # scheduler ranks the steps of older applications first.
        self._started: OrderedDict[tuple[str, str], float] = OrderedDict()

    @staticmethod
    def is_semantic(headers: Mapping[str, str]) -> bool:
        return H_SESSION in headers

    # -- submission ------------------------------------------------------------------
    async def handle(self, request: Request, route: Route, body: JSON, principal: Principal) -> Response:
        h = parse_headers(request.headers, self.settings.default_timeout_s)
        if route == "chat":
            placeholders = scan_messages(body["messages"])
        else:
            placeholders = scan_prompt(body["prompt"])
        if len(placeholders) > self.settings.max_placeholders:
            raise PayloadTooLarge(
                f"{len(placeholders)} placeholders; the limit is {self.settings.max_placeholders}",
                code="too_many_placeholders",
            )
        inputs = input_names(placeholders)
        if h.output is not None and h.output in inputs:
            raise DependencyCycle([h.output, "request", h.output])
        self.completions.resolve_model(body)
        now = time.time()
        deadline = now + h.timeout_s
        rec = RequestRecord(
            id="pr-" + uuid.uuid4().hex[:16],
            tenant=principal.tenant,
            session=h.session,
            inputs=inputs,
            output=h.output,
            criteria=h.criteria,
            status="waiting",
            created_at=now,
            replica=self.replica,
            max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        )

        def validate(existing: list[RequestRecord]) -> None:
            graph = graph_of(existing)
            try:
                graph.check(node_of(rec))
            except CycleError as exc:
                raise DependencyCycle(list(exc.cycle)) from exc
            except DuplicateProducer as exc:
                raise Conflict(f"variable '{h.output}' already has a producer", param=H_OUTPUT) from exc

        await self.store.register_request(rec, validate=validate, deadline=deadline)
        ctx = RequestContext(
            request_id=request.state.request_id, tenant=principal.tenant, session=h.session,
            weight=principal.weight, app_started=self._session_started(rec),
        )
        if h.is_async:
            self._spawn(rec, self._run(rec, route, body, ctx, deadline))
            return JSONResponse(self._pending_response(route, body, rec))
        if body.get("stream"):
            return await self._sync_stream(rec, route, body, ctx, deadline)
        task = self._spawn(rec, self._run(rec, route, body, ctx, deadline))
        # Shield: a disconnecting client must not kill work whose output others need.
        waiter = asyncio.shield(task)
        # Its outcome is read here or, after a disconnect, nowhere: mark it retrieved.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not await finished_before_disconnect(request, waiter):
            if not await self._needed(rec):
                task.cancel()
            return Response(status_code=CLIENT_CLOSED)
        result: JSON = waiter.result()
        return JSONResponse(result)

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

    def _pending_response(self, route: Route, body: JSON, rec: RequestRecord) -> JSON:
        if route == "chat":
            choice: JSON = {"index": 0, "message": {"role": "assistant", "content": ""},
                            "finish_reason": None, "logprobs": None}
            obj = "chat.completion"
            prefix = "chatcmpl-"
        else:
            choice = {"index": 0, "text": "", "finish_reason": None, "logprobs": None}
            obj = "text_completion"
            prefix = "cmpl-"
        return {
            "id": prefix + rec.id,
            "object": obj,
            "created": int(rec.created_at),
            "model": body.get("model") or "",
            "choices": [choice],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "parrot": self._parrot(rec, "pending"),
        }

    @staticmethod
    def _parrot(rec: RequestRecord, status: str) -> JSON:
        return {"session": rec.session, "output": rec.output, "status": status, "request_id": rec.id}

    # -- execution -------------------------------------------------------------------
    async def _inputs(self, rec: RequestRecord, deadline: float) -> dict[str, str]:
        """Wait for every input; raise UpstreamFailed/GatewayTimeout when that cannot happen."""
        if not rec.inputs:
            return {}
        remaining = deadline - time.time()
        states = await self.store.wait_variables(rec.tenant, rec.session, rec.inputs, max(0.0, remaining))
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

    def _substituted(self, route: Route, body: JSON, values: dict[str, str]) -> JSON:
        out = dict(body)
        if route == "chat":
            out["messages"] = substitute_messages(body["messages"], values)
        else:
            out["prompt"] = substitute_prompt(body["prompt"], values)
        return out

    async def _prepare(self, rec: RequestRecord, route: Route, body: JSON, ctx: RequestContext,
                       deadline: float) -> JSON:
        values = await self._inputs(rec, deadline)
        engine_body = self._substituted(route, body, values)
        ctx.latency_critical, ctx.group = await self._analyse(rec)
        ctx.request_id = rec.id
        shape = prompt_shape(route, engine_body, self.settings.prefix_block_tokens)
        ctx.prompt = shape
        rec.status, rec.ready_at, rec.prompt_tokens = "queued", time.time(), shape.tokens
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
                if await _persist(lambda: self.store.fail_variable(
                        rec.tenant, rec.session, output, reason, record=rec)):
                    self.metrics.variables.labels("failed").inc()
            else:
                await _persist(lambda: self.store.save_request(rec))
        except ParrotError:
            log.warning("could not record failure of %s (state store down)", rec.id)

    async def _finish(self, rec: RequestRecord, route: Route, text: str, engine: str,
                      usage: Any, started: float) -> None:
        rec.status, rec.engine, rec.started_at, rec.finished_at = "done", engine, started, time.time()
        if usage is not None:
            rec.cached_tokens = usage.cached_tokens
            rec.completion_tokens = usage.completion_tokens
            rec.prompt_tokens = usage.prompt_tokens
        if rec.output:
            output = rec.output
            await _persist(lambda: self.store.set_result(
                rec.tenant, rec.session, output, text, record=rec))
            self.metrics.variables.labels("ready").inc()
        else:
            await _persist(lambda: self.store.save_request(rec))

    async def _run(self, rec: RequestRecord, route: Route, body: JSON, ctx: RequestContext,
                   deadline: float) -> JSON:
        try:
            engine_body = await self._prepare(rec, route, body, ctx, deadline)
            t0 = time.time()
            remaining = deadline - t0
            if remaining <= 0:
                raise GatewayTimeout("session deadline passed", code="deadline_exceeded")
            try:
                outcome = await asyncio.wait_for(
                    self.completions.complete(route, engine_body, ctx), timeout=remaining
                )
            except asyncio.TimeoutError as exc:
                raise GatewayTimeout("session deadline passed while running",
                                     code="deadline_exceeded") from exc
            assert outcome.body is not None
            started = t0 + outcome.queued_s
            rec.first_token_at = None if outcome.ttft_s is None else t0 + outcome.ttft_s
            await self._finish(rec, route, choice_text(route, outcome.body), outcome.engine,
                               outcome.usage, started)
            return {**outcome.body, "parrot": self._parrot(rec, "ready")}
        except BaseException as exc:
            await asyncio.shield(self._fail(rec, exc))
            raise

    async def _sync_stream(self, rec: RequestRecord, route: Route, body: JSON, ctx: RequestContext,
                           deadline: float) -> Response:
        """Hold until inputs are ready, then stream. The engine work runs in a task
        that outlives a disconnected client when other requests need its output."""
        try:
            engine_body = await self._prepare(rec, route, body, ctx, deadline)
        except BaseException as exc:
            await asyncio.shield(self._fail(rec, exc))
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
                    route, engine_body, ctx, on_start=on_start, on_usage=usage_seen.append
                ):
                    parts.append(chunk_text(route, chunk))
                    rec.first_token_at = rec.first_token_at or (time.time() if parts[-1] else None)
                    queue.put_nowait(chunk)
                await self._finish(rec, route, "".join(parts), engine_seen[0] if engine_seen else "",
                                   usage_seen[-1] if usage_seen else None, started[0])
                queue.put_nowait(done)
            except BaseException as exc:
                queue.put_nowait(exc)
                await asyncio.shield(self._fail(rec, exc))
                if not isinstance(exc, Exception):
                    raise

        task = self._spawn(rec, produce())

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
                if not finished and not await self._needed(rec):
                    task.cancel()

        return streaming(await primed(chunks()))

    async def _needed(self, rec: RequestRecord) -> bool:
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
        graph = graph_of(records)
        path, bound = graph.critical_path(estimate_cost) if records else ([], 0.0)
        objectives = graph.deduce_objectives() if records else {}
        groups = graph.task_groups() if records else {}
        # Stored block hashes stand in for tokens: groups share >= warmup_min_tokens.
        min_blocks = max(1, self.settings.warmup_min_tokens // self.settings.prefix_block_tokens)
        pgroups = prefix_groups(
            {r.id: r.prefix_hashes for r in records if r.prefix_hashes}, min_tokens=min_blocks, block=1
        )
        variables = await self.store.list_variables(tenant, session)
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
                {"requests": g.members, "shared_tokens": g.shared_tokens * self.settings.prefix_block_tokens}
                for g in pgroups
            ],
        }
