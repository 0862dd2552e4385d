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

from analysis.prefix import byte_block_hashes, canonical_prompt
from backends.base import EngineCall, Usage
from common.errors import NotFound
from common.types import JSON, Route

from .assemble import Assembler
from .dispatcher import Dispatcher, Outcome, Restart, has_output
from .engines import EnginePool
from .metrics import Metrics
from .policy import Job


@dataclass(frozen=True)
class PromptShape:
    """What the policy needs of a prompt, without a tokenizer: its canonical size in
    bytes and the chained hashes of its byte blocks (analysis.prefix)."""

    nbytes: int
    hashes: tuple[int, ...]


class TokenEstimate:
    """Prompt bytes per engine token, learned from the engines' own usage reports.

    The gateway never tokenizes: a prompt's token count (for KV and prefill
    estimates) is its canonical byte size over this ratio, which follows
    whatever tokenizer and chat template the engines use (an EWMA of each
    finished request's ``prompt_tokens``).
    """

    def __init__(self, initial: float = 4.0, alpha: float = 0.05) -> None:
        self.bytes_per_token = initial
        self.alpha = alpha

    def tokens(self, nbytes: int) -> int:
        return max(1, round(nbytes / self.bytes_per_token))

    def observe(self, nbytes: int, prompt_tokens: int | None) -> None:
        if not prompt_tokens or prompt_tokens <= 0 or nbytes <= 0:
            return
        ratio = nbytes / prompt_tokens
        self.bytes_per_token += self.alpha * (min(max(ratio, 0.5), 64.0) - self.bytes_per_token)


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
    attained: float | None = None  # inferred programs: tokens its program was served so far
    affinity: tuple[str, int] | None = None  # (engine, tokens) believed cached there (programs)
    on_usage: Callable[[Usage], Any] | None = None  # hears the engine's usage (tpm correction)


def prompt_shape(route: str, body: JSON, block_bytes: int) -> PromptShape:
    data = canonical_prompt(route, body)
    return PromptShape(len(data), byte_block_hashes(data, block_bytes))


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
        block_bytes: int = 128,
    ) -> None:
        self.pool = pool
        self.block_bytes = block_bytes
        self.estimate = TokenEstimate()
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

    def job(self, route: str, body: JSON, ctx: RequestContext, avoid: frozenset[str],
            max_tokens: int | None = None) -> Job:
        shape = ctx.prompt or prompt_shape(route, body, self.block_bytes)
        ctx.prompt = shape
        return Job(
            id=f"{ctx.request_id}:{uuid.uuid4().hex[:8]}",
            tenant=ctx.tenant,
            prompt_tokens=self.estimate.tokens(shape.nbytes),
            prefix_hashes=shape.hashes,
            block_tokens=self.block_bytes / self.estimate.bytes_per_token,
            max_tokens=max_tokens_of(body) if max_tokens is None else max_tokens,
            latency_critical=ctx.latency_critical,
            group=ctx.group,
            session=ctx.session,
            weight=ctx.weight,
            avoid=avoid,
            downstream_s=ctx.downstream_s,
            attained=ctx.attained,
            affinity=ctx.affinity,
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
            self._learn(ctx, u)
            if ctx.on_usage is not None:
                ctx.on_usage(u)
        return outcome

    def _learn(self, ctx: RequestContext, usage: Usage) -> None:
        if ctx.prompt is not None:
            self.estimate.observe(ctx.prompt.nbytes, usage.prompt_tokens)

    async def _assembled(self, route: Route, job: Job, call: EngineCall) -> Outcome:
        """Stream from the engine, fold the chunks into one response. The client has
        seen nothing yet, so an engine dying mid-stream is retried on another one
        (``restartable``: the dispatcher says ``RESTART`` and the assembly starts over)."""
        assembler = Assembler(route)
        started: list[tuple[str, float]] = []
        ttft_s: float | None = None
        t0 = time.monotonic()
        async for chunk in self.dispatcher.stream(
            job, call, lambda e, q: started.append((e, q)), restartable=True
        ):
            if isinstance(chunk, Restart):
                assembler, ttft_s = Assembler(route), None
                continue
            if ttft_s is None and has_output(chunk):
                ttft_s = time.monotonic() - t0
            assembler.add(chunk)
        body = assembler.result()
        engine, queued_s = started[-1] if started else ("", 0.0)
        return Outcome(engine, body, Usage.from_openai(body.get("usage")), queued_s,
                       time.monotonic() - t0 - queued_s, ttft_s)

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
                self._learn(ctx, usage)
                if on_usage is not None:
                    on_usage(usage)
                if ctx.on_usage is not None:
                    ctx.on_usage(usage)
                if not want_usage:
                    if not chunk.get("choices"):
                        continue
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
            yield chunk

    # -- SGLang-native /generate ----------------------------------------------------------
    def _generate_job(self, body: JSON, ctx: RequestContext) -> tuple[Job, EngineCall]:
        """Schedule ``/generate`` like the OpenAI routes: the prompt (text or token ids) gives
        the prefix identity, ``sampling_params.max_new_tokens`` the output budget. A gateway-only
        ``model`` field picks the engines and is not forwarded (SGLang's /generate has none)."""
        body = dict(body)
        model = body.pop("model", None)
        avoid = self.resolve_model({"model": model}) if model else frozenset()
        sp = body.get("sampling_params") or {}
        budget = sp.get("max_new_tokens") if isinstance(sp, dict) else None
        budget = min(budget, MAX_TOKENS_ESTIMATE) if isinstance(budget, int) else 128  # SGLang's default
        job = self.job("generate", body, ctx, avoid, max_tokens=budget)
        return job, EngineCall(route="generate", body=body, rid=ctx.request_id)

    async def generate(self, body: JSON, ctx: RequestContext) -> Outcome:
        job, call = self._generate_job(body, ctx)
        outcome = await self.dispatcher.complete(job, call)
        if outcome.usage:
            self._account_generate(body, ctx, outcome.usage)
        return outcome

    def _account_generate(self, body: JSON, ctx: RequestContext, u: Usage) -> None:
        self.metrics.observe_usage(u.prompt_tokens, u.cached_tokens, u.completion_tokens)
        if body.get("text") is not None:  # token ids say nothing about bytes per token
            self._learn(ctx, u)

    async def generate_stream(self, body: JSON, ctx: RequestContext) -> AsyncIterator[JSON]:
        job, call = self._generate_job(body, ctx)
        async for chunk in self.dispatcher.stream(job, call):
            assert not isinstance(chunk, Restart)
            usage = Usage.of_chunk(chunk)
            if usage is not None:
                self._account_generate(body, ctx, usage)
            yield chunk
