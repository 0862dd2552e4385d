"""HTTP face of the simulated engine: SGLang's routes over Starlette, and a loopback thread.

``create_sim_app(config)`` wires tokenizer, engine and runner (a ``SimService``)
in one place; ``start_sim_thread(config)`` runs one in-process on loopback for
tests and local benchmarks. The handlers parse (``protocol``), submit and wait
(``service``) and shape (``shapes``); a client that goes away aborts its work,
as in SGLang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import BadRequest, ParrotError
from common.serving import UvicornThread, finished_before_disconnect

from . import metrics
from . import protocol as P
from .config import BANNER, CONTEXT_LENGTH, SimConfig
from .service import Job, SimService
from .shapes import (
    ChunkHead,
    Done,
    chat_response,
    completion_response,
    generate_item,
    new_id,
    openai_only,
    sse,
)
from .shapes import usage as usage_of

log = logging.getLogger("parrot.sim")

Shape = Callable[[list[Done]], Any]
Stream = Callable[[list[Job]], AsyncIterator[str]]


class SimRoutes:
    """Route handlers over one :class:`SimService`."""

    def __init__(self, svc: SimService) -> None:
        self.svc = svc

    async def _json(self, request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None

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

    async def _run(self, request: Request, parsed: P.Parsed, shape: Shape, stream: Stream) -> Response:
        jobs = self.svc.submit(parsed)
        if parsed.stream:
            async def body() -> AsyncIterator[str]:
                try:
                    async for chunk in stream(jobs):
                        yield chunk
                    yield "data: [DONE]\n\n"
                finally:
                    self.svc.abort(jobs)

            return StreamingResponse(body(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            done = await self._until_disconnect(
                request, asyncio.gather(*(self.svc.collect(j) for j in jobs)))
        finally:
            self.svc.abort(jobs)
        if done is None:
            return Response(status_code=499)
        return JSONResponse(shape(list(done)))

    async def _openai_stream(self, parsed: P.Parsed, head: ChunkHead, jobs: list[Job],
                             prompt_counted: Callable[[list[Done]], list[Done]]) -> AsyncIterator[str]:
        if head.chat:
            for j in jobs:
                yield head.role(j.index)
        finished: list[Done] = []
        async for job, ev, done in self.svc.merged(jobs):
            if ev.kind in ("first_token", "token", "finished") and ev.index >= 0:
                chunk = head.token(done or self.svc.done(job, ev.index + 1, ev.cached_tokens),
                                   ev.index)
                if chunk is not None:
                    yield chunk
            if done is not None:
                finished.append(done)
                yield head.finish(done)
        if parsed.include_usage:
            finished.sort(key=lambda d: d.index)
            yield head.chunk([], usage_of(finished, prompt_counted(finished)))

    # -- OpenAI-compatible -----------------------------------------------------------
    @property
    def sglang(self) -> bool:
        return self.svc.config.api == "sglang"

    def _openai_parsed(self, parsed: P.Parsed) -> P.Parsed:
        if not self.sglang:  # a plain OpenAI server knows nothing of SGLang's rid and priority
            parsed.rids, parsed.priority = None, 0
        return parsed

    def _shaped(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj if self.sglang else openai_only(obj)

    async def chat(self, request: Request) -> Response:
        parsed = self._openai_parsed(P.parse_chat(await self._json(request), self.svc.tok.encode))
        created, model = int(time.time()), self.svc.config.model
        rid = new_id("chatcmpl-") if not parsed.rids else parsed.rids[0]
        head = ChunkHead(rid, model, created, chat=True, sglang=self.sglang)
        return await self._run(
            request, parsed,
            lambda done: self._shaped(chat_response(rid, model, created, done, done[:1])),
            lambda jobs: self._openai_stream(parsed, head, jobs, lambda d: d[:1]),
        )

    async def completions(self, request: Request) -> Response:
        parsed = self._openai_parsed(
            P.parse_completion(await self._json(request), self.svc.tok.encode))
        created, model = int(time.time()), self.svc.config.model
        rid = new_id("cmpl-") if not parsed.rids else parsed.rids[0]
        head = ChunkHead(rid, model, created, chat=False, sglang=self.sglang)

        def firsts(done: list[Done]) -> list[Done]:  # each prompt counted once, not n times
            return [d for d in done if d.index % parsed.n == 0]

        return await self._run(
            request, parsed,
            lambda done: self._shaped(completion_response(rid, model, created, done, firsts(done))),
            lambda jobs: self._openai_stream(parsed, head, jobs, firsts),
        )

    # -- SGLang native -------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        parsed = P.parse_generate(await self._json(request), self.svc.tok.encode)

        def shape(done: list[Done]) -> Any:
            items = [generate_item(d, d.gen.text, True, parsed.logprob_text) for d in done]
            return items if parsed.batch or len(items) > 1 else items[0]

        async def stream(jobs: list[Job]) -> AsyncIterator[str]:
            texts = {j.rid: "" for j in jobs}
            async for job, ev, done in self.svc.merged(jobs):
                if ev.index < 0 and done is None:
                    continue
                produced = ev.index + 1 if ev.index >= 0 else 0
                if ev.kind in ("first_token", "token", "finished") and ev.index >= 0:
                    texts[job.rid] += job.gen.pieces[ev.index]
                d = done or self.svc.done(job, produced, ev.cached_tokens)
                item = generate_item(d, texts[job.rid], done is not None, parsed.logprob_text)
                item["index"] = job.index
                yield sse(item)

        return await self._run(request, parsed, shape, stream)

    # -- info, load, admin ------------------------------------------------------------------
    async def model_info(self, request: Request) -> Response:
        return JSONResponse(metrics.model_info(self.svc))

    async def server_info(self, request: Request) -> Response:
        return JSONResponse(metrics.server_info(self.svc))

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{
            "id": self.svc.config.model, "object": "model", "created": int(self.svc.started_at),
            "owned_by": "sglang", "root": self.svc.model_path, "max_model_len": CONTEXT_LENGTH}]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def health_generate(self, request: Request) -> Response:
        await self.svc.probe()
        return Response(status_code=200)

    async def get_load(self, request: Request) -> Response:
        return JSONResponse([metrics.load(self.svc)])

    async def loads(self, request: Request) -> Response:
        return JSONResponse({"timestamp": time.time(), "dp_rank_count": 1,
                             "loads": [metrics.load(self.svc)]})

    async def flush_cache(self, request: Request) -> Response:
        if self.svc.engine.flush_cache():
            return PlainTextResponse("Cache flushed.\n")
        return PlainTextResponse("Cache not flushed: requests are running or waiting.\n",
                                 status_code=400)

    async def abort(self, request: Request) -> Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if body.get("abort_all"):
            self.svc.runner.abort_all()
        elif isinstance(body.get("rid"), str):
            self.svc.runner.abort(body["rid"])
        else:
            raise BadRequest("'rid' or 'abort_all' is required", param="rid")
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(metrics.prometheus_text(self.svc),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    def routes(self) -> list[Route]:
        """SGLang's routes; with ``api="openai"`` only those a plain OpenAI server has."""
        get_post = ["GET", "POST"]
        common = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=get_post),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        if not self.sglang:
            return common
        return [
            *common,
            Route("/generate", self.generate, methods=["POST", "PUT"]),
            Route("/health_generate", self.health_generate, methods=get_post),
            Route("/get_model_info", self.model_info, methods=["GET"]),
            Route("/model_info", self.model_info, methods=["GET"]),
            Route("/get_server_info", self.server_info, methods=["GET"]),
            Route("/server_info", self.server_info, methods=["GET"]),
            Route("/get_load", self.get_load, methods=["GET"]),
            Route("/v1/loads", self.loads, methods=["GET"]),
            Route("/flush_cache", self.flush_cache, methods=get_post),
            Route("/abort_request", self.abort, methods=["POST"]),
        ]


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
    """A Starlette app serving one simulated SGLang engine (``app.state.sim`` is its service)."""
    config = config or SimConfig()
    svc = SimService(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.warning("%s; profile=%s time_scale=%s", BANNER, config.profile, config.time_scale)
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = Starlette(routes=SimRoutes(svc).routes(), lifespan=lifespan,
                    exception_handlers={ParrotError: _error},
                    middleware=[Middleware(_CountPaths, counter=svc.paths_seen)])
    app.state.sim = svc
    return app


class SimThread(UvicornThread):
    """A started simulated engine on loopback; ``with`` stops it at the end."""

    def __enter__(self) -> SimThread:
        if not self.thread.is_alive():
            self.start()
        return self

    @property
    def sim(self) -> SimService:
        return self.server.config.app.state.sim  # type: ignore[no-any-return]


def start_sim_thread(config: SimConfig | None = None, port: int | None = None) -> SimThread:
    """Start a simulated engine in a background thread; ``port=None`` picks a free
    loopback port (``config.port`` is ignored then)."""
    config = config or SimConfig()
    t = SimThread(create_sim_app(config), host=config.host, port=port or 0)
    config.port = t.port
    t.start()
    return t
