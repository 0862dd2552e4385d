"""OpenAI-compatible endpoints: chat completions, completions, models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.errors import NotFound
from common.ids import is_session_id
from common.types import JSON, Route

from . import program_routes as programs
from . import session_http
from .completion import RequestContext
from .responses import CLIENT_CLOSED, FastJSONResponse, primed, streaming, unless_client_left
from .validation import ChatBody, CompletionBody, parse_json, validate

if TYPE_CHECKING:
    from .wiring import Gateway


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def read_body(request: Request, route: Route) -> JSON:
    gw = gateway_of(request)
    raw = await request.body()
    body = parse_json(raw, gw.settings.max_body_bytes)
    model = ChatBody if route == "chat" else CompletionBody
    validate(body, model, max_messages=gw.settings.max_messages)
    return body


async def _completion(request: Request, route: Route) -> Response:
    gw = gateway_of(request)
    principal = gw.principal(request)
    body = await read_body(request, route)
    principal.check_model(body.get("model"))
    on_usage = gw.limits.settler(await gw.limits.check_request(principal, body))
    rid = request.state.request_id
    if session_http.is_semantic(request.headers):
        sid = request.headers.get(session_http.H_SESSION, "")
        if is_session_id(sid):  # a bad id is refused with 400 by session_http.handle
            await gw.limits.admit_session(principal, sid, gw.settings.session_ttl_s)
            await gw.index.touch(principal.tenant, sid)
        return await session_http.handle(gw.sessions, request, route, body, principal,
                                         on_usage=on_usage)
    tenant = principal.tenant if gw.auth.enabled else str(body.get("user") or principal.tenant)
    ctx = RequestContext(request_id=rid, tenant=tenant, weight=principal.weight,
                         on_usage=on_usage)
    placement = await programs.place(gw, request, body, principal, ctx,
                                     body.get("messages") if route == "chat" else None)
    if body.get("stream"):
        t = programs.tracker(gw, placement, route)
        chunks = gw.completions.stream(route, body, ctx, on_start=t.on_start, on_usage=t.on_usage)
        resp = streaming(await primed(t.follow(chunks)))
        resp.headers.update(programs.headers_of(placement) or {})
        return resp
    outcome = await unless_client_left(request, gw.completions.complete(route, body, ctx))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    programs.finish(gw, placement, outcome.body, outcome.usage, outcome.engine)
    return FastJSONResponse(outcome.body, headers=programs.headers_of(placement))


async def chat_completions(request: Request) -> Response:
    return await _completion(request, "chat")


async def completions(request: Request) -> Response:
    return await _completion(request, "completion")


async def list_models(request: Request) -> Response:
    gw = gateway_of(request)
    gw.principal(request)
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "parrot-gateway"}
        for m in gw.pool.models()
    ]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    gw = gateway_of(request)
    gw.principal(request)
    model = request.path_params["model"]
    if model not in gw.pool.models():
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": "parrot-gateway"})
