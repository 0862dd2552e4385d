"""``/v1/responses``: the OpenAI Responses API over the engines' chat route.

``POST`` translates the request to one chat completion (``responses_translate``),
runs it through ``Completions`` like any other request (queued, placed, retried,
accounted) — or, with ``X-Parrot-Session``, through the session runner
(``responses_semantic``) — and answers a response object or its event stream.
Stored responses (``store`` defaults to true) live in Redis per tenant with the
session TTL (``response_store``); ``previous_response_id`` continues one's
conversation, ``GET``/``DELETE /v1/responses/{id}`` read and remove one, and
another tenant's id is a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.errors import NotFound
from common.types import JSON

from . import program_routes as programs
from . import responses_semantic, session_http
from .openai_routes import gateway_of
from .response_store import StoredResponse
from .responses import CLIENT_CLOSED, SSE_HEADERS, ClosingStreamingResponse, primed, unless_client_left
from .responses_schema import parse_responses_body
from .responses_translate import from_chat
from .responses_turn import Turn
from .validation import parse_json


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
    semantic = session_http.is_semantic(request.headers)
    turn = Turn(gw, principal, req, history, request.state.request_id, semantic=semantic)
    await gw.limits.check_request(principal, turn.chat)
    if semantic:
        return await responses_semantic.create(gw, request, principal, turn)
    # the conversation (previous_response_id's history + this input) places it in its program
    placement = await programs.place(gw, request, turn.chat, principal, turn.ctx, turn.chat.get("messages"))
    if req.stream:
        t = programs.tracker(gw, placement, "chat")
        chunks = gw.completions.stream("chat", turn.chat, turn.ctx, on_start=t.on_start, on_usage=t.on_usage)
        return ClosingStreamingResponse(
            turn.events(await primed(t.follow(chunks))), media_type="text/event-stream",
            headers={**SSE_HEADERS, **(programs.headers_of(placement) or {})})
    outcome = await unless_client_left(request, gw.completions.complete("chat", turn.chat, turn.ctx))
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    assert outcome.body is not None
    programs.finish(gw, placement, outcome.body, outcome.usage, outcome.engine)
    response = from_chat(turn.base, outcome.body)
    await turn.save(response)
    return JSONResponse(response, headers=programs.headers_of(placement))


async def _stored(request: Request) -> StoredResponse:
    gw = gateway_of(request)
    principal = gw.principal(request)
    rid = request.path_params["response_id"]
    found = await gw.responses.get(principal.tenant, rid)
    if found is None:
        raise NotFound(f"Response with id '{rid}' not found.", param="response_id")
    return found


async def retrieve(request: Request) -> Response:
    return JSONResponse((await _stored(request)).response)


async def input_items(request: Request) -> Response:
    items = (await _stored(request)).input_items
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
