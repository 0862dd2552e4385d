"""Semantic variables on ``/v1/responses``: ``X-Parrot-Session`` and friends, as on the chat route.

Placeholders (``{{name}}``) may stand in ``instructions`` and in the text of
input items; the turn's chat request is registered in the session graph and
run by the ``SessionRunner`` when its inputs are ready. ``X-Parrot-Output``
makes the output text a variable. Async (``X-Parrot-Async: 1``) answers at
once with an ``in_progress`` response carrying the ``parrot`` member; when
stored, the response is rewritten when the run ends, so
``GET /v1/responses/{id}`` can be polled like a background response. The
chained history (``previous_response_id``) is escaped: what was said then is
literal text now, never a placeholder.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from analysis.placeholders import scan_messages
from common.errors import ParrotError
from common.ids import is_session_id
from common.serving import finished_before_disconnect

from . import session_http
from .responses import CLIENT_CLOSED, SSE_HEADERS, ClosingStreamingResponse, primed
from .responses_translate import from_chat
from .responses_turn import Turn
from .session_runner import Run, Submission

if TYPE_CHECKING:
    from .auth import Principal
    from .wiring import Gateway

log = logging.getLogger("parrot.responses")


async def create(gw: Gateway, request: Request, principal: Principal, turn: Turn) -> Response:
    h = session_http.parse_headers(request.headers, gw.settings.default_timeout_s)
    if is_session_id(h.session):
        await gw.limits.admit_session(principal, h.session, gw.settings.session_ttl_s)
    names = list(dict.fromkeys(p.name for p in scan_messages(turn.chat["messages"])))

    async def values() -> dict[str, str]:
        out = {}
        for name in names:
            var = await gw.store.get_variable(principal.tenant, h.session, name)
            out[name] = var.value if var is not None and var.value is not None else ""
        return out

    turn.values = values
    run = await gw.sessions.register(Submission(
        tenant=principal.tenant, session=h.session, route="chat", body=turn.chat,
        request_id=request.state.request_id, output=h.output, criteria=h.criteria,
        timeout_s=h.timeout_s, weight=principal.weight,
    ))
    if turn.req.stream:
        chunks = await primed(await gw.sessions.open_stream(run))
        ready = {"parrot": session_http.parrot_info(run.rec, "ready")}
        return ClosingStreamingResponse(turn.events(chunks, ready), media_type="text/event-stream",
                                        headers=SSE_HEADERS)
    task = gw.sessions.start(run, detached=h.is_async)
    if h.is_async:
        pending = {**turn.base, "parrot": session_http.parrot_info(run.rec, "pending")}
        if turn.stored:
            await turn.save(pending, final=False)
            gw.responses.keep(asyncio.ensure_future(_settle(turn, run, task)))
        return JSONResponse(pending)
    waiter = asyncio.shield(task)
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
    if not await finished_before_disconnect(request, waiter):
        await gw.sessions.cancel_unless_needed(run.rec, task)
        return Response(status_code=CLIENT_CLOSED)
    response = {**from_chat(turn.base, waiter.result()),
                "parrot": session_http.parrot_info(run.rec, "ready")}
    await turn.save(response)
    return JSONResponse(response)


async def _settle(turn: Turn, run: Run, task: asyncio.Task[Any]) -> None:
    """Rewrite an async turn's stored response once its run ends, done or failed."""
    try:
        chat = await asyncio.shield(task)
        response = {**from_chat(turn.base, chat), "parrot": session_http.parrot_info(run.rec, "ready")}
    except (Exception, asyncio.CancelledError) as exc:
        code, message = ((exc.code, exc.message) if isinstance(exc, ParrotError)
                         else ("cancelled", "request cancelled"))
        response = {**turn.base, "status": "failed", "error": {"code": code, "message": message},
                    "parrot": session_http.parrot_info(run.rec, "failed")}
        try:
            await turn.save(response, final=False)
        except ParrotError:
            log.warning("could not store the failed response %s", turn.base["id"])
        return
    try:
        await turn.save(response)
    except ParrotError:
        log.warning("could not store the response %s", turn.base["id"])
