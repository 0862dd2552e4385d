"""The app factory: routes, middleware and lifespan around a built ``Gateway`` (wiring.py).

    request → middleware (session forwarding, request id, metrics) → routes (openai_routes,
    session_routes, health) → sessions (semantic variables) / completions →
    scheduler (pure policy) → engine pool → backends
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.base import Engine
from common.errors import ParrotError

from . import generate_route, logs, openai_routes, program_routes, responses_api, session_routes, tracing
from .forwarding import SessionForwarding
from .intake import IntakeGate
from .metrics import Metrics
from .settings import Settings
from .ui import routes as ui_routes
from .wiring import Gateway, build_gateway

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("parrot.gateway")

REQUEST_ID = "x-request-id"


def error_response(exc: ParrotError, request_id: str | None = None) -> JSONResponse:
    headers = dict(exc.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _parrot_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ParrotError)
    return error_response(exc, getattr(request.state, "request_id", None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
    typ, code = kinds.get(exc.status_code, ("invalid_request_error", "http_error"))
    body = {"error": {"message": f"{exc.detail}: {request.method} {request.url.path}", "type": typ,
                      "param": None, "code": code}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    body = {"error": {"message": "internal error", "type": "server_error", "param": None,
                      "code": "internal_error"}}
    return JSONResponse(body, status_code=500)


class RequestIdMiddleware:
    """Accept or generate X-Request-Id, echo it, and time the request for metrics; note
    the client's W3C trace headers (passed on to engines as they are while tracing is off)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        sid = None
        traceparent = tracestate = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                rid = v.decode("latin-1")[:128]
            elif k == b"x-parrot-session":
                sid = v.decode("latin-1")
            elif k == b"traceparent":
                traceparent = v
            elif k == b"tracestate":
                tracestate = v
        if not rid or not rid.isprintable():
            rid = "req-" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = logs.request_id.set(rid)
        session_token = logs.session_id.set(logs.session_of(scope.get("path", ""), sid))
        trace_token = tracing.incoming.set(
            tracing.client_trace_headers(traceparent, tracestate) if traceparent else None
        )
        start = time.perf_counter()
        status = 500
        route = _route_label(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            logs.request_id.reset(token)
            logs.session_id.reset(session_token)
            tracing.incoming.reset(trace_token)
            m = self.metrics
            m.child(m.requests, route, str(status)).inc()
            m.child(m.latency, route).observe(time.perf_counter() - start)


def _route_label(scope: Scope) -> str:
    path: str = scope.get("path", "")
    if path.startswith("/v1/sessions/"):
        return "/v1/sessions/{sid}/variables" if "/variables/" in path else "/v1/sessions/{sid}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/programs/"):
        return "/v1/programs/{id}"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    known = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses", "/generate",
             "/get_model_info", "/health", "/ready", "/metrics"}
    return path if path in known else "other"


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    problems = []
    if gw.draining:
        problems.append("draining")
    try:
        await asyncio.wait_for(gw.redis.ping(), timeout=1.0)
    except Exception:  # Redis down, failing over, or redis-py tripping over it
        problems.append("redis unreachable")
    healthy = [s.id for s in gw.pool.healthy()]
    if not healthy:
        problems.append("no engine in rotation")
    body = {"ready": not problems, "problems": problems, "engines": healthy}
    return JSONResponse(body, status_code=200 if not problems else 503)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return PlainTextResponse(gw.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(
    settings: Settings | None = None,
    *,
    engines: list[Engine] | None = None,
    redis_url: str | None = None,
    gateway: Gateway | None = None,
    tracer_provider: TracerProvider | None = None,
    peer_url: str | None = None,
) -> Starlette:
    """The gateway's ASGI app. ``tracer_provider`` (tests) stands in for the one built from
    the OTEL_* variables when tracing is on; ``peer_url``: where other replicas reach this
    one (default ``settings.peer_url()``)."""
    settings = settings or Settings()
    gw = gateway or build_gateway(settings, engines=engines, redis_url=redis_url,
                                  tracer_provider=tracer_provider, peer_url=peer_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        if not gw.pool.healthy():
            log.warning("no engine answered its first health check; will keep trying")
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_routes.completions, methods=["POST"]),
        Route("/v1/models", openai_routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_routes.get_model, methods=["GET"]),
        *responses_api.routes,
        *generate_route.routes,
        *session_routes.routes,
        *program_routes.routes,
        *ui_routes.routes,
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ParrotError: _parrot_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.gateway = gw
    app.add_middleware(IntakeGate, slots=gw.sessions.intake)
    if gw.tracing.middleware is not None:  # inside the request-id middleware: it sees the id
        app.add_middleware(gw.tracing.middleware, tracing=gw.tracing, route_of=_route_label)
    app.add_middleware(RequestIdMiddleware, metrics=gw.metrics)
    # outermost: a relayed request is counted, limited and traced where it is served
    app.add_middleware(SessionForwarding, membership=gw.membership, client=gw.peers,
                       metrics=gw.metrics, enabled=gw.settings.forward_sessions)
    return app


__all__ = ["create_app"]


