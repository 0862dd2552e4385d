"""Running semantic-variable requests: register a request in its session's graph
(Redis), wait for its inputs, analyse it, run it on the engines, and settle its output.

A request is a node of its session's dataflow graph; variables are its edges.
Whatever happens — engine failure, timeout, cancellation — the output variable
ends ``ready`` or ``failed``, so consumers never hang: a failed input fails every
transitive consumer with ``upstream_failed`` naming the variable.

This module knows nothing of HTTP: it takes a `Submission` (plain fields) and hands back
tasks, engine answers and chunk streams (``session_http.py`` speaks HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from analysis.placeholders import (
    input_names,
    scan_messages,
    scan_prompt,
    substitute_messages,
    substitute_prompt,
)
from common.errors import (
    Conflict,
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
from .dispatcher import no_engine, overloaded
from .intake import IntakeSlots
from .metrics import Metrics
from .session_graph import Analysis, GraphCache, cycle_check, graph_view
from .session_types import (
    STORE_RETRY_S,
    Inputs,
    Run,
    Submission,
    choice_text,
    chunk_text,
    output_attributes,
    persist,
    record_attributes,
    run_attributes,
    run_outcome,
)
from .settings import Settings
from .store import RequestRecord, SessionStore, Variable
from .tracing import Tracing
from .work import WorkItem, WorkLedger

__all__ = ["Inputs", "Run", "SessionRunner", "Submission"]

log = logging.getLogger("parrot.sessions")

PREFIX_HASH_BLOCKS = 128
DEADLINE_GRACE_S = 1.0  # see _inputs
PROGRESS_SAVE_S = 1.0  # a request still queued this long shows so in its session graph
OUTPUT_PARAM = "x-parrot-output"  # where a second producer is reported (the header)


class SessionRunner:
    """Registers, runs, cancels and drains the semantic requests of this replica."""

    def __init__(
        self, settings: Settings, store: SessionStore, completions: Completions, metrics: Metrics,
        *, replica: str | None = None, ledger: WorkLedger | None = None, tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.completions = completions
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.replica = replica or "gw-" + uuid.uuid4().hex[:12]
        self.ledger = ledger  # where accepted work is recorded (None: not recorded)
        self.intake = IntakeSlots(settings.intake_slots)  # background work takes turns
        self.graphs = GraphCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._by_session: dict[tuple[str, str], set[asyncio.Task[Any]]] = {}
        self._work: dict[str, tuple[RequestRecord, asyncio.Task[Any]]] = {}  # rid -> run
        self._queued: dict[tuple[str, str], dict[str, None]] = {}  # session -> queued rids
        self._background: set[asyncio.Task[Any]] = set()
        self._handed: set[str] = set()  # stopped unsettled: left to (or taken by) another replica
        self.handed_over = 0  # requests left to other replicas at drain
        self.live: dict[str, tuple[str, str]] = {}  # id -> (tenant, session) to settle here

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
        if len(self.live) >= self.settings.max_accepted_requests:
            raise overloaded(f"{len(self.live)} semantic requests accepted and unfinished")
        if not self.completions.pool.healthy():
            raise no_engine()  # nothing could run it now: refuse rather than accept
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
        work = None
        if sub.output is not None and self.ledger is not None:
            # Findable before it is acknowledged: a crash after the answer loses nothing.
            await self.ledger.note(sub.tenant, sub.session)
            work = WorkItem(sub.route, body, sub.request_id, deadline, sub.weight).entry(self.replica)
        self.live[rec.id] = (rec.tenant, rec.session)
        notifier = self.store.notifier
        waiter = notifier.open(rec.tenant, rec.session, inputs) if inputs and notifier else None
        try:
            with self.tracing.span("parrot.register", record_attributes(rec)):
                reg = await self.store.register_request(
                    rec, validate=cycle_check(rec, OUTPUT_PARAM), deadline=deadline, work=work)
        except BaseException:
            self.live.pop(rec.id, None)
            if waiter is not None and notifier is not None:
                notifier.close(rec.tenant, rec.session, waiter)
            raise
        self.graphs.added(rec, reg.graph)
        if rec.inputs:
            self._regroup(rec.tenant, rec.session, reg.graph)
        if reg.deadline is not None:  # the session's deadline bounds every request of it
            deadline = min(deadline, reg.deadline)
        ctx = RequestContext(
            request_id=sub.request_id, tenant=sub.tenant, session=sub.session,
            weight=sub.weight, app_started=reg.created, on_usage=sub.on_usage,
        )
        initial = (reg.inputs, reg.graph) if reg.inputs is not None else None
        return Run(rec, sub.route, body, ctx, deadline, waiter, initial)

    def start(self, run: Run, *, detached: bool = False) -> asyncio.Task[JSON]:
        """Run it in a task of this replica; the task's result is the engine's answer. ``detached``
        (``X-Parrot-Async``): traced as a trace of its own, linked to the submitting request."""
        span = self.tracing.run_span("parrot.run", run_attributes(run, self.replica), detached=detached)
        return self._spawn(run.rec, self.tracing.run(span, self._run(run), lambda: run_outcome(run.rec)))

    def adopt(self, rec: RequestRecord, item: WorkItem) -> None:
        """Run a request taken over from a dead replica (gateway/work.py), from the start:
        its client, if it was waiting, is gone; its output variable is what matters."""
        if rec.id in self.live:
            return  # already running here
        self.live[rec.id] = (rec.tenant, rec.session)
        rec.replica, rec.status = self.replica, "waiting"
        rec.ready_at = rec.queued_at = rec.started_at = None
        ctx = RequestContext(request_id=item.request_id, tenant=rec.tenant, session=rec.session,
                             weight=item.weight, app_started=rec.created_at)
        run = Run(rec, item.route, item.body, ctx, item.deadline)
        self.metrics.adopted.inc()
        attributes = {**run_attributes(run, self.replica), "parrot.adopted": True}
        span = self.tracing.run_span("parrot.run", attributes, detached=True)
        self._spawn(rec, self.tracing.run(span, self._run(run), lambda: run_outcome(rec)))

    def _background_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spawn(self, rec: RequestRecord, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"parrot:{rec.id}")
        key = (rec.tenant, rec.session)
        self._tasks.add(task)
        self._by_session.setdefault(key, set()).add(task)
        if rec.output is not None:
            self._work[rec.id] = (rec, task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            self._work.pop(rec.id, None)
            self._handed.discard(rec.id)
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
    async def _inputs(self, run: Run) -> Inputs:
        """Wait for every input; raise UpstreamFailed/GatewayTimeout when that cannot happen."""
        rec, deadline = run.rec, run.deadline
        if not rec.inputs:
            return Inputs({}, None, None)
        remaining = deadline - time.time()
        with self.tracing.span("parrot.wait_inputs", {"parrot.inputs": rec.inputs}):
            waiter, initial, run.waiter, run.initial = run.waiter, run.initial, None, None
            try:
                states, version = await self.store.wait_inputs(
                    rec.tenant, rec.session, rec.inputs, max(0.0, remaining), waiter=waiter,
                    initial=initial)
            finally:
                if waiter is not None and self.store.notifier is not None:
                    self.store.notifier.close(rec.tenant, rec.session, waiter)
            if any(v.status == "pending" and v.producer for v in states.values()) and \
                    not any(v.status == "failed" for v in states.values()):
                # A moment past the deadline for inputs some request produces: one whose
                # producer fails *at* the deadline is then reported as what it is
                # (upstream_failed, naming it), not as our own timeout.
                states, version = await self.store.wait_inputs(
                    rec.tenant, rec.session, rec.inputs, DEADLINE_GRACE_S)
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
            return Inputs(values, version, max((v.updated_at or 0.0) for v in states.values()))

    async def _analysis(self, tenant: str, session: str, version: int | None) -> Analysis:
        """The session graph's analysis at ``version`` (None: the copy held here, if any),
        re-read from Redis only when this replica's copy is stale."""
        cached = self.graphs.get(tenant, session, version)
        if cached is not None:
            return cached
        records, current = await self.store.read_graph(tenant, session)
        return self.graphs.put(tenant, session, records, current)

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
        inputs = await self._inputs(run)
        async with self.intake.turn(rec.criteria == "throughput"):
            values = inputs.values
            engine_body = self._substituted(run.route, run.body, values) if values else run.body
            analysis = await self._analysis(rec.tenant, rec.session, inputs.version)
            shape = prompt_shape(run.route, engine_body, self.settings.prefix_block_bytes)
        ctx.latency_critical = analysis.objective(rec.id, rec.criteria) == "latency"
        ctx.group = analysis.group(rec.id) if self.settings.task_groups else None
        ctx.downstream_s = analysis.downstream(rec.id)
        ctx.request_id = rec.id
        ctx.prompt = shape
        rec.status, rec.ready_at = "queued", time.time()
        rec.prompt_tokens = self.completions.estimate.tokens(shape.nbytes)
        rec.prefix_hashes = list(shape.hashes[:PREFIX_HASH_BLOCKS])
        rec.criteria_effective = "latency" if ctx.latency_critical else "throughput"
        rec.group = ctx.group
        # Progress for the graph view only, for requests still queued after a moment (a late
        # save never overwrites the final record, scripts.SAVE_RECORD).
        asyncio.get_running_loop().call_later(PROGRESS_SAVE_S, self._save_progress, rec)
        if inputs.written_at:
            self.metrics.pipeline.observe(max(0.0, time.time() - inputs.written_at))
        return engine_body

    def _save_progress(self, rec: RequestRecord) -> None:
        if rec.status == "queued" and rec.id not in self._handed:
            self._background_task(self._save_quietly(rec))

    async def _save_quietly(self, rec: RequestRecord) -> None:
        try:
            await self.store.save_request(rec)
        except ParrotError:
            pass

    # -- task groups that change after a request was queued -----------------------------
    def _regroup(self, tenant: str, session: str, version: int) -> None:
        """A consumer registered after some of its producers were queued here: move those
        into the task group the graph now gives them (`Dispatcher.set_group`)."""
        queued = self._queued.get((tenant, session))
        if queued:
            self._background_task(self._regroup_now(tenant, session, version, list(queued)))

    async def _regroup_now(self, tenant: str, session: str, version: int, rids: list[str]) -> None:
        try:
            analysis = await self._analysis(tenant, session, version)
        except ParrotError:
            return
        if not self.settings.task_groups:
            return
        for rid in rids:
            self.completions.dispatcher.set_group(rid, analysis.group(rid))

    def on_graph(self, tenant: str, session: str, version: int) -> None:
        """Notifier listener: a consumer registered in this session (here or elsewhere)."""
        self._regroup(tenant, session, version)

    # -- outcome ---------------------------------------------------------------------
    async def _fail(self, rec: RequestRecord, exc: BaseException) -> None:
        try:
            await self._record_failure(rec, exc)
        finally:
            self.live.pop(rec.id, None)

    async def _record_failure(self, rec: RequestRecord, exc: BaseException) -> None:
        if rec.id in self._handed:
            return  # not ours to settle (any more)
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
                with self.tracing.span("parrot.write_output", output_attributes(output, "failed")):
                    if await persist(lambda: self.store.fail_variable(
                            rec.tenant, rec.session, output, reason, record=rec)):
                        self.metrics.variables.labels("failed").inc()
            else:
                await persist(lambda: self.store.save_request(rec))
        except ParrotError:
            log.warning("could not record failure of %s (state store down)", rec.id)

    async def _finish(self, rec: RequestRecord, text: str, engine: str, usage: Any,
                      started: float) -> None:
        try:
            await self._record_result(rec, text, engine, usage, started)
        finally:
            self.live.pop(rec.id, None)

    async def _record_result(self, rec: RequestRecord, text: str, engine: str, usage: Any,
                             started: float) -> None:
        if rec.id in self._handed:
            return  # another replica runs (or ran) it; its outcome is that one's to write
        rec.status, rec.engine, rec.started_at, rec.finished_at = "done", engine, started, time.time()
        if usage is not None:
            rec.cached_tokens = usage.cached_tokens
            rec.completion_tokens = usage.completion_tokens
            rec.prompt_tokens = usage.prompt_tokens
        if rec.output:
            output = rec.output
            try:
                with self.tracing.span("parrot.write_output", output_attributes(output, "ready", text)):
                    await persist(lambda: self.store.set_result(
                        rec.tenant, rec.session, output, text, producer=rec.id, record=rec))
            except Conflict:
                # Settled already: another replica ran it too (it adopted it while our
                # lease had lapsed). Written once: the first value stands.
                log.info("request %s: output %s was settled by another run", rec.id, output)
                return
            self.metrics.variables.labels("ready").inc()
        else:
            await persist(lambda: self.store.save_request(rec))

    async def _complete(self, run: Run, body: JSON) -> Any:
        """The engine call of accepted work: while no engine is in rotation (all down, or
        taken out under overload) it waits and tries again, up to ``engine_wait_s`` and
        never past its deadline, instead of failing at once."""
        first_failure: float | None = None
        delay = 0.1
        tries = 0
        while True:
            if tries:  # a fresh engine rid: the broken attempt may still be in flight there
                run.ctx.request_id = f"{run.rec.id}-again{tries}"
            tries += 1
            remaining = run.deadline - time.time()
            if remaining <= 0:
                raise GatewayTimeout("session deadline passed", code="deadline_exceeded")
            try:
                return await asyncio.wait_for(
                    self.completions.complete(run.route, body, run.ctx), timeout=remaining)
            except asyncio.TimeoutError as exc:
                raise GatewayTimeout("session deadline passed while running",
                                     code="deadline_exceeded") from exc
            except ServiceUnavailable:
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                if now - first_failure + delay > self.settings.engine_wait_s or \
                        time.time() + delay >= run.deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _run(self, run: Run) -> JSON:
        rec, route = run.rec, run.route
        key = (rec.tenant, rec.session)
        try:
            engine_body = await persist(lambda: self._prepare(run),
                                         min(STORE_RETRY_S, max(0.0, run.deadline - time.time())))
            self._still_ours(rec)
            t0 = rec.queued_at = time.time()
            self._queued.setdefault(key, {})[rec.id] = None
            try:
                outcome = await self._complete(run, engine_body)
            finally:
                self._unqueue(key, rec.id)
            assert outcome.body is not None
            started = t0 + outcome.queued_s
            rec.first_token_at = None if outcome.ttft_s is None else t0 + outcome.ttft_s
            await self._finish(rec, choice_text(route, outcome.body), outcome.engine,
                               outcome.usage, started)
            return outcome.body
        except BaseException as exc:
            await asyncio.shield(self._fail(rec, exc))
            raise

    def _still_ours(self, rec: RequestRecord) -> None:
        """Stop here if the request was handed over. A cancellation can be lost (Python
        3.11's wait_for returns the result instead of raising when its inner future
        completes as the task is cancelled), so the flag is checked as well."""
        if rec.id in self._handed:
            raise asyncio.CancelledError()

    def _unqueue(self, key: tuple[str, str], rid: str) -> None:
        queued = self._queued.get(key)
        if queued is not None:
            queued.pop(rid, None)
            if not queued:
                del self._queued[key]

    async def open_stream(self, run: Run) -> AsyncIterator[JSON]:
        """Hold until the inputs are ready (errors until then raise here), then return the
        engine's chunks. The engine work runs in a task that outlives a reader who stops
        early when other requests need its output."""
        rec, route = run.rec, run.route
        span = self.tracing.run_span("parrot.run", run_attributes(run, self.replica), detached=False)
        try:
            with self.tracing.using(span):
                engine_body = await self._prepare(run)
        except BaseException as exc:
            await asyncio.shield(self.tracing.run(span, self._fail(rec, exc), lambda: run_outcome(rec)))
            raise
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def produce() -> None:
            parts: list[str] = []
            usage_seen: list[Any] = []
            engine_seen: list[str] = []
            t0 = rec.queued_at = time.time()
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

        task = self._spawn(rec, self.tracing.run(span, produce(), lambda: run_outcome(rec)))

        async def chunks() -> AsyncIterator[JSON]:
            finished = False
            try:
                while (item := await queue.get()) is not done:
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    yield item
                finished = True
            finally:
                if not finished:  # the reader left; decided in a task: an await here would be
                    # cancelled too under Starlette's disconnect scope, the engine call run on unread
                    self._background_task(self.cancel_unless_needed(rec, task))

        return chunks()

    async def cancel_unless_needed(self, rec: RequestRecord, task: asyncio.Task[Any]) -> None:
        """Its reader left: stop ``task`` unless another request consumes its output."""
        if not await self.needed(rec):
            task.cancel()

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
        self.graphs.drop(tenant, session)
        return await self.store.delete_session(tenant, session)

    def busy_sessions(self) -> set[tuple[str, str]]:
        """Sessions this replica holds unsettled requests of now."""
        return set(self.live.values()) | set(self._by_session)

    async def drain(self, timeout: float, *, hand_over: bool = False) -> None:
        """Let in-flight requests finish for up to ``timeout`` s. What is left is then handed
        over (``hand_over``: another replica is alive to adopt it: its work stays recorded
        under this replica's lease, which the caller gives up) or cancelled and failed."""
        tasks = list(self._tasks)
        if not tasks:
            return
        log.info("draining %d in-flight semantic requests (timeout %.0fs)", len(tasks), timeout)
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        handed = [rid for rid, (_, t) in self._work.items() if t in pending] if hand_over else []
        self._hand_over(handed)
        self.handed_over += len(handed)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if handed:
            log.warning("handed %d unfinished request(s) over to the other replicas", len(handed))

    def _hand_over(self, rids: list[str]) -> None:
        for rid in rids:
            if rid in self._work:
                self._handed.add(rid)
                self.live.pop(rid, None)
                self._work[rid][1].cancel()

    async def verify_ownership(self) -> int:
        """Our lease had lapsed: stop (without settling) what another replica adopted."""
        lost = []
        for rid, (rec, _) in list(self._work.items()):
            try:
                owner = await self.store.work_owner(rec.tenant, rec.session, rid)
            except ParrotError:
                return 0
            if owner is not None and owner != self.replica:
                lost.append(rid)
        self._hand_over(lost)
        if lost:
            log.warning("%d request(s) were adopted by other replicas; stopped here", len(lost))
        return len(lost)

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
