"""OpenAI-compatible endpoints: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.types import JSON, Route

from .completion import RequestContext, sse_stream
from .validation import ChatBody, CompletionBody, parse_json, validate

if TYPE_CHECKING:
    from .app import Gateway

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_CLOSED = 499  # nginx's code: nobody reads this response
SESSION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def read_body(request: Request, route: Route) -> JSON:
    gw = gateway_of(request)
    raw = await request.body()
    body = parse_json(raw, gw.settings.max_body_bytes)
    model = ChatBody if route == "chat" else CompletionBody
    validate(body, model, max_messages=gw.settings.max_messages)
    return body


async def primed(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pull the first chunk before the response starts, so early errors get a real status."""
    first = await chunks.__anext__()

    async def rest() -> AsyncIterator[Any]:
        yield first
        async for c in chunks:
            yield c

    return rest()


def streaming(chunks: AsyncIterator[JSON]) -> StreamingResponse:
    return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)


async def _completion(request: Request, route: Route) -> Response:
    gw = gateway_of(request)
    principal = gw.principal(request)
    body = await read_body(request, route)
    principal.check_model(body.get("model"))
    await gw.limits.check_request(principal, body)
    rid = request.state.request_id
    if gw.sessions.is_semantic(request.headers):
        sid = request.headers.get("x-parrot-session", "")
        if SESSION_ID.match(sid):  # a bad id is refused with 400 by sessions.handle
            await gw.limits.admit_session(principal, sid, gw.settings.session_ttl_s)
        return await gw.sessions.handle(request, route, body, principal)
    tenant = principal.tenant if gw.auth.enabled else str(body.get("user") or principal.tenant)
    ctx = RequestContext(request_id=rid, tenant=tenant, weight=principal.weight)
    if body.get("stream"):
        try:
            chunks = await primed(gw.completions.stream(route, body, ctx))
        except StopAsyncIteration:
            chunks = _empty()
        return streaming(chunks)
    task = asyncio.ensure_future(gw.completions.complete(route, body, ctx))
    try:
        if not await finished_before_disconnect(request, task):
            task.cancel()  # the client left: free the engine (it aborts on our disconnect)
            return Response(status_code=CLIENT_CLOSED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    return JSONResponse(task.result().body)


async def finished_before_disconnect(request: Request, task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` or the client's disconnect, whichever comes first.

    Starlette does not cancel a handler whose client went away, so a
    non-streaming call would keep its engine busy for nothing; the caller
    decides what to cancel (a semantic request may still be needed).
    """

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    return task.done()


async def _empty() -> AsyncIterator[JSON]:
    return
    yield  # pragma: no cover


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
        from .errors import NotFound

        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": "parrot-gateway"})
