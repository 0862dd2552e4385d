"""``/v1/responses``: the OpenAI Responses API over the engines' chat route.

``POST`` translates the request to one chat completion (``responses_translate``),
runs it through ``Completions`` like any other request (queued, placed, retried,
accounted), and answers a response object or its event stream. Stored responses
(``store`` defaults to true) live in Redis per tenant with the session TTL
(``response_store``); ``previous_response_id`` continues one's conversation,
``GET``/``DELETE /v1/responses/{id}`` read and remove one, and another tenant's
id is a 404.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import NotFound, ParrotError
from common.serving import finished_before_disconnect
from common.types import JSON

from .completion import RequestContext
from .openai_routes import gateway_of
from .response_store import StoredResponse
from .responses import CLIENT_CLOSED, SSE_HEADERS, primed
from .responses_schema import ResponsesBody, parse_responses_body
from .responses_translate import (
    EventStream,
    chat_body,
    from_chat,
    input_messages,
    new_id,
    output_messages,
    skeleton,
)
from .validation import ChatBody, parse_json, validate

if TYPE_CHECKING:
    from .auth import Principal
    from .wiring import Gateway


def sse_event(event: JSON) -> bytes:
    return (f"event: {event['type']}\ndata: ".encode()
            + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def _input_items(req: ResponsesBody) -> list[JSON]:
    """This turn's input items as ``GET /v1/responses/{id}/input_items`` lists them."""
    if isinstance(req.input, str):
        items: list[JSON] = [{"type": "message", "role": "user", "status": "completed",
                              "content": [{"type": "input_text", "text": req.input}]}]
    else:
        items = [i.model_dump(by_alias=True, exclude_none=True) for i in req.input]
    return [{"id": i.get("id") or new_id("msg"), **i} for i in items]


class _Turn:
    """One create call: the parsed request, its chat body, and how to store its result."""

    def __init__(self, gw: Gateway, principal: Principal, req: ResponsesBody,
                 history: list[JSON], request_id: str) -> None:
        self.gw, self.principal, self.req = gw, principal, req
        self.chat = chat_body(req, history, stream=bool(req.stream))
        validate(self.chat, ChatBody, max_messages=gw.settings.max_messages)
        self.conversation = history + input_messages(req)
        self.base = skeleton(req, new_id("resp"))
        tenant = principal.tenant if gw.auth.enabled else req.user or principal.tenant
        self.ctx = RequestContext(request_id=request_id, tenant=tenant, weight=principal.weight)

    async def save(self, response: JSON) -> None:
        if self.req.store is False:
            return
        record = StoredResponse(response, self.conversation + output_messages(response["output"]),
                                _input_items(self.req))
        await self.gw.responses.put(self.principal.tenant, record)

    async def events(self, chunks: AsyncIterator[JSON]) -> AsyncIterator[bytes]:
        stream = EventStream(self.base)
        for ev in stream.start():
            yield sse_event(ev)
        try:
            async for chunk in chunks:
                for ev in stream.chunk(chunk):
                    yield sse_event(ev)
            closing, response = stream.finish()
            for ev in closing:
                yield sse_event(ev)
            await self.save(response)
            yield sse_event(stream.terminal(response))
        except ParrotError as exc:
            yield sse_event(stream.failed({"code": exc.code, "message": exc.message}))


async def create(request: Request) -> Response:
    gw = gateway_of(request)
    principal = gw.principal(request)
    req = parse_responses_body(parse_json(await request.body(), gw.settings.max_body_bytes))
    principal.check_model(req.model)
    history: list[JSON] = []
    if req.previous_response_id is not None:
        prev = await gw.responses.get(principal.tenant, req.previous_response_id)
        if prev is None:
            raise NotFound(f"Previous response with id '{req.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = prev.conversation
    turn = _Turn(gw, principal, req, history, request.state.request_id)
    await gw.limits.check_request(principal, turn.chat)
    if req.stream:
        chunks = await primed(gw.completions.stream("chat", turn.chat, turn.ctx))
        return StreamingResponse(turn.events(chunks), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    task = asyncio.ensure_future(gw.completions.complete("chat", turn.chat, turn.ctx))
    try:
        if not await finished_before_disconnect(request, task):
            task.cancel()
            return Response(status_code=CLIENT_CLOSED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    outcome = task.result()
    assert outcome.body is not None
    response = from_chat(turn.base, outcome.body)
    await turn.save(response)
    return JSONResponse(response)


async def _stored(request: Request) -> tuple[Gateway, Any, StoredResponse]:
    gw = gateway_of(request)
    principal = gw.principal(request)
    rid = request.path_params["response_id"]
    found = await gw.responses.get(principal.tenant, rid)
    if found is None:
        raise NotFound(f"Response with id '{rid}' not found.", param="response_id")
    return gw, principal, found


async def retrieve(request: Request) -> Response:
    _, _, found = await _stored(request)
    return JSONResponse(found.response)


async def input_items(request: Request) -> Response:
    _, _, found = await _stored(request)
    items = found.input_items
    return JSONResponse({"object": "list", "data": items, "has_more": False,
                         "first_id": items[0]["id"] if items else None,
                         "last_id": items[-1]["id"] if items else None})


async def delete(request: Request) -> Response:
    gw = gateway_of(request)
    principal = gw.principal(request)
    rid = request.path_params["response_id"]
    if not await gw.responses.delete(principal.tenant, rid):
        raise NotFound(f"Response with id '{rid}' not found.", param="response_id")
    return JSONResponse({"id": rid, "object": "response.deleted", "deleted": True})


routes = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
]
