"""Engine plumbing behind the routes: requests in as jobs, engine events out, aborts.

``SimService`` owns the tokenizer, the pure engine and the runner that drives it
in scaled wall time. It knows nothing of HTTP: the routes (``app``) turn a
:class:`~backends.sim.protocol.Parsed` into jobs here and shape what comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from analysis.tokenizer import Tokenizer, get_tokenizer
from common.errors import BadRequest

from .agent import AgentSpec, agent_generate
from .config import CONTEXT_LENGTH, SimConfig
from .engine import Engine, EngineRequest, Event
from .protocol import Parsed, Sampling
from .runner import Handle, Runner
from .shapes import Done, new_id
from .textgen import Generation, TokenLogprob, generate, token_logprobs
from .tokenizer_files import ensure_tokenizer_dir


@dataclass
class Job:
    """One completion of one prompt, submitted to the engine."""

    rid: str
    index: int
    prompt: list[int]
    gen: Generation
    handle: Handle
    started: float
    logprobs: list[TokenLogprob] | None = None


class SimService:
    def __init__(self, config: SimConfig, tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        self.engine_config = config.engine_config()
        self.tok = tokenizer or get_tokenizer(config.tokenizer)
        self.model_path = str(ensure_tokenizer_dir(config.model_path))
        self.engine = Engine(self.engine_config)
        self.runner = Runner(self.engine, config.time_scale)
        self.requests_total = 0
        self.started_at = time.time()
        self.paths_seen: Counter[str] = Counter()
        """Requests per path (shows which endpoints a router probes)."""

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        self.runner.abort_all()
        await self.runner.stop()

    # -- intake -------------------------------------------------------------------------
    def generation(self, prompt: list[int], s: Sampling, j: int,
                   agent: AgentSpec | None = None) -> Generation:
        """What choice ``j`` of ``prompt`` will say: greedy ignores the seed; unseeded
        sampling uses the server's seed; ``ignore_eos`` lets it run to ``max_tokens``;
        tools and response formats make it an agent's answer (``agent``)."""
        seed = None if s.greedy else (s.seed if s.seed is not None else self.config.seed) + j
        if agent is not None:
            gen = agent_generate(self.tok, agent, prompt, s.max_new_tokens, seed, s.stop,
                                 s.no_stop_trim)
            if gen is not None:
                return gen
        eos_after = None if s.ignore_eos else self.config.eos_after
        return generate(self.tok, prompt, s.max_new_tokens, seed, s.stop, s.stop_token_ids,
                        s.no_stop_trim, eos_after)

    def submit(self, parsed: Parsed) -> list[Job]:
        """Queue ``n`` completions of each prompt; all or none (a bad one aborts the rest)."""
        total = len(parsed.prompts) * parsed.n
        rids = parsed.rids
        if rids is not None and len(rids) == 1 and total > 1:  # SGLang: rid "r" -> "r_0", "r_1" ...
            rids = [f"{rids[0]}_{k}" for k in range(total)]
        if rids is not None and len(rids) != total:
            raise BadRequest(f"'rid' needs {total} ids, got {len(rids)}", param="rid")
        s = parsed.sampling
        jobs: list[Job] = []
        try:
            for pi, prompt in enumerate(parsed.prompts):
                if len(prompt) + s.max_new_tokens > CONTEXT_LENGTH:
                    raise BadRequest(
                        f"Requested token count exceeds the model's maximum context length of "
                        f"{CONTEXT_LENGTH} tokens: {len(prompt)} in the prompt plus "
                        f"{s.max_new_tokens} to generate.", param="max_tokens",
                    )
                for j in range(parsed.n):
                    k = pi * parsed.n + j
                    rid = rids[k] if rids else new_id()
                    gen = self.generation(prompt, s, j, parsed.agent)
                    lps = (token_logprobs(self.tok, gen.token_ids, parsed.logprobs)
                           if parsed.logprobs is not None else None)
                    req = EngineRequest(rid, prompt, gen.token_ids, parsed.priority,
                                        max_new_tokens=s.max_new_tokens)
                    h = self.runner.submit(req)
                    jobs.append(Job(rid, k, prompt, gen, h, time.monotonic(), lps))
        except ValueError as e:
            self.abort(jobs)
            raise BadRequest(str(e)) from None
        self.requests_total += len(jobs)
        return jobs

    # -- events -------------------------------------------------------------------------
    def done(self, job: Job, produced: int, cached: int, aborted: bool = False) -> Done:
        """``job`` as shaped so far: ``produced`` tokens; an aborted one is cut there."""
        gen = job.gen
        if aborted:
            gen = gen.cut(produced, "abort")
        return Done(job.rid, job.index, len(job.prompt), cached, gen, produced,
                    time.monotonic() - job.started, job.logprobs)

    async def events(self, job: Job) -> AsyncIterator[tuple[Event, Done | None]]:
        """Each event of ``job``; the last one comes with its Done."""
        cached = 0
        while True:
            ev = await job.handle.queue.get()
            cached = ev.cached_tokens or cached
            if ev.kind == "finished":
                yield ev, self.done(job, ev.index + 1, cached)
                return
            if ev.kind == "aborted":
                yield ev, self.done(job, max(ev.index, 0), cached, aborted=True)
                return
            yield ev, None

    async def collect(self, job: Job) -> Done:
        """Wait for ``job`` to finish (or be aborted, then cut where it stopped)."""
        produced = 0
        async for ev, done in self.events(job):
            if ev.kind in ("first_token", "token"):
                produced = ev.index + 1
            if done is not None:
                if done.gen.finish_reason == "abort":
                    return self.done(job, produced, done.cached_tokens, aborted=True)
                return done
        raise RuntimeError("event stream ended without finishing")  # pragma: no cover

    async def merged(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, Event, Done | None]]:
        """The events of all ``jobs`` as they come; ends when every job has its Done."""
        if len(jobs) == 1:
            async for ev, done in self.events(jobs[0]):
                yield jobs[0], ev, done
            return
        q: asyncio.Queue[tuple[Job, Event, Done | None]] = asyncio.Queue()

        async def pump(job: Job) -> None:
            async for ev, done in self.events(job):
                await q.put((job, ev, done))

        tasks = [asyncio.ensure_future(pump(j)) for j in jobs]
        try:
            left = len(jobs)
            while left:
                item = await q.get()
                if item[2] is not None:
                    left -= 1
                yield item
        finally:
            for t in tasks:
                t.cancel()

    def abort(self, jobs: list[Job]) -> None:
        """Abort those of ``jobs`` still queued or running (client gone, error)."""
        for job in jobs:
            if self.runner.is_active(job.rid):
                self.runner.abort(job.rid)

    async def probe(self, timeout: float = 20) -> None:
        """Run a one-token request through the engine (``/health_generate``)."""
        parsed = Parsed("generate", [self.tok.encode("health")], Sampling(max_new_tokens=1))
        jobs = self.submit(parsed)
        try:
            await asyncio.wait_for(self.collect(jobs[0]), timeout=timeout)
        finally:
            self.abort(jobs)
