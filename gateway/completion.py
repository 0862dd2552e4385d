"""Run one OpenAI request on the engines: build the job, queue it, call, account.

Shared by the transparent proxy path and by semantic-variable requests (after
their placeholders are substituted).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from analysis.chat_template import render_chat
from analysis.prefix import block_hashes
from analysis.tokenizer import get_tokenizer
from backends.base import EngineCall, Usage
from common.errors import NotFound
from common.types import JSON, Route

from .assemble import Assembler
from .dispatcher import Dispatcher, Outcome, Restart
from .engines import EnginePool
from .metrics import Metrics
from .policy import Job


@dataclass(frozen=True)
class PromptShape:
    """What the policy needs of a prompt: its length and its chained block hashes."""

    tokens: int
    hashes: tuple[int, ...]


@dataclass
class RequestContext:
    """Who asked, and what the analysis says about the request."""

    request_id: str
    tenant: str = "default"
    session: str | None = None
    latency_critical: bool = True
    group: str | None = None
    weight: float = 1.0
    prompt: PromptShape | None = None  # already measured (semantic requests)
    app_started: float | None = None  # wall time its application (session) started
    downstream_s: float = 0.0  # estimated work after it on its application's critical path
    on_usage: Callable[[Usage], Any] | None = None  # hears the engine's usage (tpm correction)


def prompt_text(route: Route, body: JSON) -> str:
    if route == "chat":
        return render_chat(body.get("messages") or [])
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], str):
            return str(prompt[0])
        return ""
    return str(prompt or "")


def prompt_tokens(route: Route, body: JSON) -> list[int]:
    prompt = body.get("prompt")
    if route == "completion" and isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], int):
            return [int(t) for t in prompt]
        if isinstance(prompt[0], list):
            return [int(t) for t in prompt[0]]
    return get_tokenizer().encode(prompt_text(route, body))


def prompt_shape(route: Route, body: JSON, block_tokens: int) -> PromptShape:
    tokens = prompt_tokens(route, body)
    return PromptShape(len(tokens), tuple(block_hashes(tokens, block_tokens)))


MAX_TOKENS_ESTIMATE = 32768  # cap of the scheduling estimate; the engine enforces its context


def max_tokens_of(body: JSON) -> int:
    """Output budget used for scheduling estimates (KV reservation, work)."""
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and v > 0:
            return min(v, MAX_TOKENS_ESTIMATE)
    return 256


class Completions:
    def __init__(
        self,
        pool: EnginePool,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        stream_internally: bool = True,
        block_tokens: int = 32,
    ) -> None:
        self.pool = pool
        self.block_tokens = block_tokens
        self.dispatcher = dispatcher
        self.metrics = metrics
        # Stream from engines even for non-streaming clients: the first chunk marks the
        # end of prefill, which releases requests waiting for a shared prefix (warm-up).
        self.stream_internally = stream_internally

    def resolve_model(self, body: JSON) -> frozenset[str]:
        """Fill in a missing model; return the engines that cannot serve it."""
        models = self.pool.models()
        model = body.get("model")
        if not model:
            if models:
                body["model"] = models[0]
            return frozenset()
        if not models:
            return frozenset()
        if model not in models:
            raise NotFound(
                f"The model '{model}' does not exist", param="model", code="model_not_found"
            )
        return frozenset(s.id for s in self.pool.states.values() if s.models and model not in s.models)

    def job(self, route: Route, body: JSON, ctx: RequestContext, avoid: frozenset[str]) -> Job:
        shape = ctx.prompt or prompt_shape(route, body, self.block_tokens)
        return Job(
            id=f"{ctx.request_id}:{uuid.uuid4().hex[:8]}",
            tenant=ctx.tenant,
            prompt_tokens=shape.tokens,
            prefix_hashes=shape.hashes,
            max_tokens=max_tokens_of(body),
            latency_critical=ctx.latency_critical,
            group=ctx.group,
            session=ctx.session,
            weight=ctx.weight,
            avoid=avoid,
            downstream_s=ctx.downstream_s,
            app_started=None if ctx.app_started is None
            else self.dispatcher.clock() - max(0.0, time.time() - ctx.app_started),
        )

    def _call(self, route: Route, body: JSON, ctx: RequestContext) -> EngineCall:
        # The priority comes from the policy's dispatch decision (class and app age).
        return EngineCall(route=route, body=body, rid=ctx.request_id)

    async def complete(self, route: Route, body: JSON, ctx: RequestContext) -> Outcome:
        avoid = self.resolve_model(body)
        body = {**body, "stream": self.stream_internally}
        body.pop("stream_options", None)
        job, call = self.job(route, body, ctx, avoid), self._call(route, body, ctx)
        if self.stream_internally:
            outcome = await self._assembled(route, job, call)
        else:
            outcome = await self.dispatcher.complete(job, call)
        if outcome.usage:
            u = outcome.usage
            self.metrics.observe_usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)
            if ctx.on_usage is not None:
                ctx.on_usage(u)
        return outcome

    async def _assembled(self, route: Route, job: Job, call: EngineCall) -> Outcome:
        """Stream from the engine, fold the chunks into one response. The client has
        seen nothing yet, so an engine dying mid-stream is retried on another one
        (``restartable``: the dispatcher says ``RESTART`` and the assembly starts over)."""
        assembler = Assembler(route)
        started: list[tuple[str, float]] = []
        t0 = time.monotonic()
        async for chunk in self.dispatcher.stream(
            job, call, lambda e, q: started.append((e, q)), restartable=True
        ):
            if isinstance(chunk, Restart):
                assembler = Assembler(route)
                continue
            assembler.add(chunk)
        body = assembler.result()
        engine, queued_s = started[-1] if started else ("", 0.0)
        return Outcome(engine, body, Usage.from_openai(body.get("usage")), queued_s,
                       time.monotonic() - t0 - queued_s)

    async def stream(
        self,
        route: Route,
        body: JSON,
        ctx: RequestContext,
        on_start: Callable[[str, float], Any] | None = None,
        on_usage: Callable[[Usage], Any] | None = None,
    ) -> AsyncIterator[JSON]:
        """Yield the engine's chunks as the client asked for them (usage only if asked)."""
        avoid = self.resolve_model(body)
        opts = body.get("stream_options") or {}
        want_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        job = self.job(route, body, ctx, avoid)
        async for chunk in self.dispatcher.stream(job, self._call(route, body, ctx), on_start):
            assert not isinstance(chunk, Restart)
            usage = Usage.from_openai(chunk.get("usage"))
            if usage is not None:
                self.metrics.observe_usage(
                    usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
                )
                if on_usage is not None:
                    on_usage(usage)
                if ctx.on_usage is not None:
                    ctx.on_usage(usage)
                if not want_usage:
                    if not chunk.get("choices"):
                        continue
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
            yield chunk
