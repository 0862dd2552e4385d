"""HTTP face of the simulated engine: SGLang's API subset over Starlette.

``create_sim_app(config)`` wires tokenizer, engine and runner in one place;
``main(argv)`` is ``parrot-gateway sim``; ``start_sim_thread(config)`` runs one
in-process on loopback for tests and local benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from analysis.tokenizer import Tokenizer, get_tokenizer
from common.errors import BadRequest, ParrotError
from common.serving import UvicornThread, finished_before_disconnect

from . import protocol as P
from .engine import Engine, EngineConfig, EngineRequest, Event
from .profiles import DEFAULT_PROFILE, PROFILES, get_profile
from .runner import Handle, Runner
from .textgen import Generation, generate
from .tokenizer_files import ensure_tokenizer_dir

log = logging.getLogger("parrot.sim")

BANNER = "SIMULATED ENGINE: a software stand-in for one GPU running SGLang (no model, no GPU)"


CONTEXT_LENGTH = 131072  # Llama-3.1-8B's context window

@dataclass
class SimConfig:
    """Settings of one simulated engine; ``None`` means the profile's default."""

    profile: str = DEFAULT_PROFILE
    time_scale: float = 1.0
    max_running_requests: int | None = None
    kv_capacity_tokens: int | None = None
    chunked_prefill_size: int | None = None
    seed: int = 0
    model: str = "sim-llama-3-8b"
    host: str = "127.0.0.1"
    port: int = 30000
    model_path: str | None = None
    """Tokenizer directory reported as ``model_path``; default: a generated cache dir."""

    def engine_config(self) -> EngineConfig:
        p = get_profile(self.profile)
        return EngineConfig(
            profile=p,
            max_running_requests=self.max_running_requests or p.max_running_requests,
            kv_capacity_tokens=self.kv_capacity_tokens or p.kv_capacity_tokens,
            chunked_prefill_size=self.chunked_prefill_size or p.chunked_prefill_size,
        )


@dataclass
class _Job:
    rid: str
    index: int
    prompt: list[int]
    gen: Generation
    handle: Handle
    started: float


class SimServer:
    """Route handlers over one engine + runner."""

    def __init__(self, config: SimConfig, tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        self.engine_config = config.engine_config()
        self.tok = tokenizer or get_tokenizer()
        self.model_path = str(ensure_tokenizer_dir(config.model_path))
        self.engine = Engine(self.engine_config)
        self.runner = Runner(self.engine, config.time_scale)
        self.requests_total = 0
        self.started_at = time.time()
        self.paths_seen: Counter[str] = Counter()
        """Requests per path (shows which endpoints a router probes)."""

    # -- engine plumbing -----------------------------------------------------------
    def _submit(self, parsed: P.Parsed) -> list[_Job]:
        total = len(parsed.prompts) * parsed.n
        if parsed.rids is not None and len(parsed.rids) != total:
            raise BadRequest(f"'rid' needs {total} ids, got {len(parsed.rids)}", param="rid")
        s = parsed.sampling
        base_seed = s.seed if s.seed is not None else self.config.seed
        jobs: list[_Job] = []
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
                    rid = parsed.rids[k] if parsed.rids else P.new_id()
                    gen = generate(self.tok, prompt, s.max_new_tokens, base_seed + j, s.stop,
                                   s.stop_token_ids, s.no_stop_trim)
                    req = EngineRequest(rid, prompt, gen.token_ids, parsed.priority)
                    h = self.runner.submit(req)
                    jobs.append(_Job(rid, k, prompt, gen, h, time.monotonic()))
        except ValueError as e:
            for job in jobs:
                self.runner.abort(job.rid)
            raise BadRequest(str(e)) from None
        self.requests_total += len(jobs)
        return jobs

    def _done(self, job: _Job, produced: int, cached: int, aborted: bool) -> P.Done:
        gen = job.gen
        if aborted:
            gen = Generation(gen.token_ids[:produced], gen.pieces[:produced], "abort")
        return P.Done(job.rid, job.index, len(job.prompt), cached, gen, produced,
                      time.monotonic() - job.started)

    async def _events(self, job: _Job) -> AsyncIterator[tuple[Event, P.Done | None]]:
        """Each event of ``job``; the last one comes with its Done."""
        cached = 0
        while True:
            ev = await job.handle.queue.get()
            cached = ev.cached_tokens or cached
            if ev.kind == "finished":
                yield ev, self._done(job, ev.index + 1, cached, False)
                return
            if ev.kind == "aborted":
                yield ev, self._done(job, max(ev.index, 0), cached, True)
                return
            yield ev, None

    async def _collect(self, job: _Job) -> P.Done:
        produced = 0
        async for ev, done in self._events(job):
            if ev.kind in ("first_token", "token"):
                produced = ev.index + 1
            if done is not None:
                if done.gen.finish_reason == "abort":
                    return self._done(job, produced, done.cached_tokens, True)
                return done
        raise RuntimeError("event stream ended without finishing")  # pragma: no cover

    def _abort_jobs(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if self.runner.is_active(job.rid):
                self.runner.abort(job.rid)

    async def _until_disconnect(self, request: Request, work: Awaitable[Any]) -> Any:
        """Await ``work``; if the client goes away first, cancel it (SGLang aborts too)."""
        task = asyncio.ensure_future(work)
        await finished_before_disconnect(request, task)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _merged(self, jobs: list[_Job]) -> AsyncIterator[tuple[_Job, Event, P.Done | None]]:
        if len(jobs) == 1:
            async for ev, done in self._events(jobs[0]):
                yield jobs[0], ev, done
            return
        q: asyncio.Queue[tuple[_Job, Event, P.Done | None]] = asyncio.Queue()

        async def pump(job: _Job) -> None:
            async for ev, done in self._events(job):
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

    async def _run(self, request: Request, parsed: P.Parsed,
                   shape: Callable[[list[_Job], list[P.Done]], Any],
                   stream: Callable[[list[_Job]], AsyncIterator[str]]) -> Response:
        jobs = self._submit(parsed)
        if parsed.stream:
            async def body() -> AsyncIterator[str]:
                try:
                    async for chunk in stream(jobs):
                        yield chunk
                    yield "data: [DONE]\n\n"
                finally:
                    self._abort_jobs(jobs)

            return StreamingResponse(body(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            done = await self._until_disconnect(
                request, asyncio.gather(*(self._collect(j) for j in jobs)))
        finally:
            self._abort_jobs(jobs)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(shape(jobs, list(done)))

    # -- OpenAI-compatible -----------------------------------------------------------
    async def _json(self, request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None

    def _model(self, parsed: P.Parsed) -> str:
        return self.config.model

    async def chat(self, request: Request) -> Response:
        parsed = P.parse_chat(await self._json(request), self.tok.encode)
        created, model = int(time.time()), self._model(parsed)
        rid = P.new_id("chatcmpl-") if not parsed.rids else parsed.rids[0]

        def shape(jobs: list[_Job], done: list[P.Done]) -> Any:
            return P.chat_response(rid, model, created, done, done[:1])

        async def stream(jobs: list[_Job]) -> AsyncIterator[str]:
            def chunk(choices: list[Any], usage: Any = None) -> str:
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": choices, "usage": usage}
                return f"data: {json.dumps(obj)}\n\n"

            for j in jobs:
                yield chunk([{"index": j.index, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
            finished: list[P.Done] = []
            async for job, ev, done in self._merged(jobs):
                if ev.kind in ("first_token", "token", "finished") and ev.index >= 0:
                    piece = job.gen.pieces[ev.index]
                    if piece:
                        yield chunk([{"index": job.index, "delta": {"content": piece},
                                      "logprobs": None, "finish_reason": None}])
                if done is not None:
                    finished.append(done)
                    yield chunk([{"index": job.index, "delta": {}, "logprobs": None,
                                  "finish_reason": done.gen.finish_reason,
                                  "matched_stop": done.gen.matched_stop}])
            if parsed.include_usage:
                finished.sort(key=lambda d: d.index)
                yield chunk([], P.usage(finished, finished[:1]))

        return await self._run(request, parsed, shape, stream)

    async def completions(self, request: Request) -> Response:
        parsed = P.parse_completion(await self._json(request), self.tok.encode)
        created, model = int(time.time()), self._model(parsed)
        rid = P.new_id("cmpl-") if not parsed.rids else parsed.rids[0]

        def firsts(done: list[P.Done]) -> list[P.Done]:
            return [d for d in done if d.index % parsed.n == 0]

        def shape(jobs: list[_Job], done: list[P.Done]) -> Any:
            return P.completion_response(rid, model, created, done, firsts(done))

        async def stream(jobs: list[_Job]) -> AsyncIterator[str]:
            def chunk(choices: list[Any], usage: Any = None) -> str:
                obj = {"id": rid, "object": "text_completion", "created": created,
                       "model": model, "choices": choices, "usage": usage}
                return f"data: {json.dumps(obj)}\n\n"

            finished: list[P.Done] = []
            async for job, ev, done in self._merged(jobs):
                if ev.kind in ("first_token", "token", "finished") and ev.index >= 0:
                    piece = job.gen.pieces[ev.index]
                    if piece:
                        yield chunk([{"index": job.index, "text": piece, "logprobs": None,
                                      "finish_reason": None}])
                if done is not None:
                    finished.append(done)
                    yield chunk([{"index": job.index, "text": "", "logprobs": None,
                                  "finish_reason": done.gen.finish_reason,
                                  "matched_stop": done.gen.matched_stop}])
            if parsed.include_usage:
                finished.sort(key=lambda d: d.index)
                yield chunk([], P.usage(finished, firsts(finished)))

        return await self._run(request, parsed, shape, stream)

    # -- SGLang native -------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        parsed = P.parse_generate(await self._json(request), self.tok.encode)

        def shape(jobs: list[_Job], done: list[P.Done]) -> Any:
            items = [P.generate_item(d, d.gen.text, d.gen.token_ids[: d.produced], True)
                     for d in done]
            return items if parsed.batch or len(items) > 1 else items[0]

        async def stream(jobs: list[_Job]) -> AsyncIterator[str]:
            texts = {j.rid: "" for j in jobs}
            async for job, ev, done in self._merged(jobs):
                if ev.index < 0 and done is None:
                    continue
                produced = ev.index + 1 if ev.index >= 0 else 0
                if ev.kind in ("first_token", "token", "finished") and ev.index >= 0:
                    texts[job.rid] += job.gen.pieces[ev.index]
                d = done or self._done(job, produced, ev.cached_tokens, False)
                item = P.generate_item(d, texts[job.rid], job.gen.token_ids[:produced],
                                       done is not None)
                item["index"] = job.index
                yield f"data: {json.dumps(item)}\n\n"

        return await self._run(request, parsed, shape, stream)

    # -- info, load, admin ------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        e = self.engine
        waiting_tokens = sum(len(r.req.input_ids) for r in e.waiting)
        return {
            "dp_rank": 0,
            "num_reqs": len(e.running) + len(e.waiting),
            "num_running_reqs": len(e.running),
            "num_waiting_reqs": len(e.waiting),
            "num_tokens": e.used_tokens - e.cache.evictable_tokens + waiting_tokens,
            "num_used_tokens": e.used_tokens,
            "max_total_num_tokens": self.engine_config.kv_capacity_tokens,
            "token_usage": round(e.used_tokens / self.engine_config.kv_capacity_tokens, 6),
            "cache_hit_rate": self._hit_rate(),
        }

    def _hit_rate(self) -> float:
        s = self.engine.stats
        return round(s.cached_tokens / s.prompt_tokens, 6) if s.prompt_tokens else 0.0

    def model_info(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.model_path,
            "served_model_name": self.config.model,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "simulated": True,
        }

    def server_info(self) -> dict[str, Any]:
        ec = self.engine_config
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.model_path,
            "served_model_name": self.config.model,
            "host": self.config.host,
            "port": self.config.port,
            "tp_size": 1,
            "dp_size": 1,
            "page_size": 1,
            "max_running_requests": ec.max_running_requests,
            "max_total_num_tokens": ec.kv_capacity_tokens,
            "chunked_prefill_size": ec.chunked_prefill_size,
            "context_length": CONTEXT_LENGTH,
            "enable_priority_scheduling": True,
            "schedule_low_priority_values_first": False,
            "schedule_policy": "fcfs",
            "disable_radix_cache": False,
            "disaggregation_mode": "null",
            "random_seed": self.config.seed,
            "version": "sim",
            "simulated": True,
            "sim_profile": ec.profile.name,
            "sim_time_scale": self.config.time_scale,
            "internal_states": [{
                "max_total_num_tokens": ec.kv_capacity_tokens,
                "max_running_requests": ec.max_running_requests,
                "last_gen_throughput": 0.0,
                **self._load(),
            }],
        }

    async def r_model_info(self, request: Request) -> Response:
        return JSONResponse(self.model_info())

    async def r_server_info(self, request: Request) -> Response:
        return JSONResponse(self.server_info())

    async def r_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": self.config.model, "object": "model", "created": int(self.started_at),
            "owned_by": "sglang", "root": self.model_path, "max_model_len": CONTEXT_LENGTH}]})

    async def r_health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def r_health_generate(self, request: Request) -> Response:
        parsed = P.Parsed("generate", [self.tok.encode("health")], P.Sampling(max_new_tokens=1))
        jobs = self._submit(parsed)
        try:
            await asyncio.wait_for(self._collect(jobs[0]), timeout=20)
        finally:
            self._abort_jobs(jobs)
        return Response(status_code=200)

    async def r_get_load(self, request: Request) -> Response:
        return JSONResponse([self._load()])

    async def r_loads(self, request: Request) -> Response:
        return JSONResponse({"timestamp": time.time(), "dp_rank_count": 1,
                             "loads": [self._load()]})

    async def r_flush_cache(self, request: Request) -> Response:
        if self.engine.flush_cache():
            return PlainTextResponse("Cache flushed.\n")
        return PlainTextResponse("Cache not flushed: requests are running or waiting.\n",
                                 status_code=400)

    async def r_abort(self, request: Request) -> Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if body.get("abort_all"):
            self.runner.abort_all()
        elif isinstance(body.get("rid"), str):
            self.runner.abort(body["rid"])
        else:
            raise BadRequest("'rid' or 'abort_all' is required", param="rid")
        return Response(status_code=200)

    async def r_metrics(self, request: Request) -> Response:
        e, s = self.engine, self.engine.stats
        labels = f'{{model_name="{self.config.model}"}}'
        rows = [
            ("sglang:num_running_reqs", "gauge", "Running requests.", len(e.running)),
            ("sglang:num_queue_reqs", "gauge", "Waiting requests.", len(e.waiting)),
            ("sglang:num_used_tokens", "gauge", "KV tokens in use.", e.used_tokens),
            ("sglang:max_total_num_tokens", "gauge", "KV pool size in tokens.",
             self.engine_config.kv_capacity_tokens),
            ("sglang:token_usage", "gauge", "KV pool fraction in use.",
             e.used_tokens / self.engine_config.kv_capacity_tokens),
            ("sglang:cache_hit_rate", "gauge", "Prefix-cache hit rate (prompt tokens).",
             self._hit_rate()),
            ("sglang:prompt_tokens_total", "counter", "Prompt tokens.", s.prompt_tokens),
            ("sglang:cached_tokens_total", "counter", "Prompt tokens from cache.",
             s.cached_tokens),
            ("sglang:generation_tokens_total", "counter", "Generated tokens.",
             s.generation_tokens),
            ("sglang:num_requests_total", "counter", "Requests received.", self.requests_total),
            ("sglang:num_aborted_requests_total", "counter", "Aborted requests.", s.aborted),
            ("sim:busy_seconds_total", "counter", "Simulated GPU busy time (unscaled).",
             self.runner.busy_virtual_s),
            ("sim:steps_total", "counter", "Forward passes.", self.runner.steps),
        ]
        out = []
        for name, kind, help_, value in rows:
            out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
        return PlainTextResponse("\n".join(out) + "\n",
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


class _CountPaths:
    """Pure ASGI middleware counting requests per path."""

    def __init__(self, app: Any, counter: Counter[str]) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.counter[scope["path"]] += 1
        await self.app(scope, receive, send)


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ParrotError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_sim_app(config: SimConfig | None = None) -> Starlette:
    """A Starlette app serving one simulated SGLang engine."""
    config = config or SimConfig()
    srv = SimServer(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.warning("%s; profile=%s time_scale=%s", BANNER, config.profile, config.time_scale)
        await srv.runner.start()
        try:
            yield
        finally:
            srv.runner.abort_all()
            await srv.runner.stop()

    get_post = ["GET", "POST"]
    routes = [
        Route("/v1/chat/completions", srv.chat, methods=["POST"]),
        Route("/v1/completions", srv.completions, methods=["POST"]),
        Route("/generate", srv.generate, methods=["POST", "PUT"]),
        Route("/v1/models", srv.r_models, methods=["GET"]),
        Route("/health", srv.r_health, methods=get_post),
        Route("/health_generate", srv.r_health_generate, methods=get_post),
        Route("/get_model_info", srv.r_model_info, methods=["GET"]),
        Route("/model_info", srv.r_model_info, methods=["GET"]),
        Route("/get_server_info", srv.r_server_info, methods=["GET"]),
        Route("/server_info", srv.r_server_info, methods=["GET"]),
        Route("/get_load", srv.r_get_load, methods=["GET"]),
        Route("/v1/loads", srv.r_loads, methods=["GET"]),
        Route("/flush_cache", srv.r_flush_cache, methods=get_post),
        Route("/abort_request", srv.r_abort, methods=["POST"]),
        Route("/metrics", srv.r_metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ParrotError: _error},
                    middleware=[Middleware(_CountPaths, counter=srv.paths_seen)])
    app.state.sim = srv
    return app


class SimThread(UvicornThread):
    """A started simulated engine on loopback; ``with`` stops it at the end."""

    def __enter__(self) -> SimThread:
        if not self.thread.is_alive():
            self.start()
        return self

    @property
    def sim(self) -> SimServer:
        return self.server.config.app.state.sim  # type: ignore[no-any-return]


def start_sim_thread(config: SimConfig | None = None, port: int | None = None) -> SimThread:
    """Start a simulated engine in a background thread; ``port=None`` picks a free
    loopback port (``config.port`` is ignored then)."""
    config = config or SimConfig()
    t = SimThread(create_sim_app(config), host=config.host, port=port or 0)
    config.port = t.port
    t.start()
    return t


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="parrot-gateway sim", description=BANNER)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES))
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="wall seconds per simulated second (0.01 = 100x faster)")
    ap.add_argument("--max-running-requests", type=int, default=None)
    ap.add_argument("--kv-capacity-tokens", type=int, default=None)
    ap.add_argument("--chunked-prefill-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="sim-llama-3-8b", help="served model name")
    ap.add_argument("--model-path", default=None, help="tokenizer directory to report/create")
    ap.add_argument("--log-level", default="info")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``parrot-gateway sim``: run one simulated engine in the foreground."""
    import uvicorn

    a = _parser().parse_args(argv)
    if a.time_scale < 0:
        print("--time-scale must be >= 0")
        return 2
    config = SimConfig(profile=a.profile, time_scale=a.time_scale,
                       max_running_requests=a.max_running_requests,
                       kv_capacity_tokens=a.kv_capacity_tokens,
                       chunked_prefill_size=a.chunked_prefill_size, seed=a.seed,
                       model=a.model, host=a.host, port=a.port, model_path=a.model_path)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    app = create_sim_app(config)
    print(f"*** {BANNER} ***\n*** listening on http://{a.host}:{a.port} "
          f"profile={a.profile} time_scale={a.time_scale} ***", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level.lower())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
