"""Programs on the HTTP side: placing a plain request, recording its answer, the
``X-Parrot-Program`` header and ``GET /v1/programs/{id}`` (tenant-scoped)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analysis.programs import assistant_messages
from backends.base import Usage
from common.errors import BadRequest, NotFound, ServiceUnavailable
from common.ids import is_session_id
from common.types import JSON

from .assemble import Assembler
from .auth import Principal
from .completion import RequestContext
from .programs import Placement, program_view, scheduling_key

if TYPE_CHECKING:
    from .wiring import Gateway

H_PROGRAM = "X-Parrot-Program"


def program_hint(request: Request) -> str | None:
    """An explicit ``X-Parrot-Program`` (same grammar as session ids), or None."""
    hint = request.headers.get(H_PROGRAM)
    if hint is None:
        return None
    if not is_session_id(hint):
        raise BadRequest(f"{H_PROGRAM} must match [A-Za-z0-9_.-]{{1,128}}", param=H_PROGRAM,
                         code="invalid_header")
    return hint


async def place(gw: Gateway, request: Request, body: JSON, principal: Principal,
                ctx: RequestContext, messages: Any = None) -> Placement | None:
    """Put a plain request in its program and tell the scheduler: the program is its
    application (age, attained service, engine window). Without auth the ``user``
    field already names the fair-share tenant, so it links nothing here."""
    hint = program_hint(request)
    user = body.get("user") if gw.auth.enabled else None
    placement = await gw.programs.place(
        principal.tenant, messages, request_id=ctx.request_id,
        user=user if isinstance(user, str) else None, hint=hint)
    if placement is not None:
        rec = placement.record
        ctx.app_started = rec.started
        if gw.settings.program_order == "las":
            ctx.session = scheduling_key(principal.tenant, placement.program)
            ctx.attained = float(rec.attained)
        if rec.last_engine and rec.context_tokens > 0:
            ctx.affinity = (rec.last_engine, rec.context_tokens)
    return placement


def headers_of(placement: Placement | None) -> dict[str, str] | None:
    return {H_PROGRAM: placement.program} if placement is not None else None


def finish(gw: Gateway, placement: Placement | None, body: JSON | None, usage: Usage | None,
           engine: str | None) -> None:
    if placement is not None:
        gw.programs.finish(placement, assistant_messages(body or {}), usage, engine)


class StreamTracker:
    """Follows a stream the client reads, to record the answer once it ended."""

    def __init__(self, gw: Gateway, placement: Placement | None, route: Any) -> None:
        self.gw = gw
        self.placement = placement
        self.assembler = Assembler(route) if placement is not None else None
        self.engine: str | None = None
        self.usage: Usage | None = None

    def on_start(self, engine: str, queued_s: float) -> None:
        self.engine = engine

    def on_usage(self, usage: Usage) -> None:
        self.usage = usage

    async def follow(self, chunks: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
        async for chunk in chunks:
            if self.assembler is not None:
                self.assembler.add(chunk)
            yield chunk
        if self.assembler is not None:
            finish(self.gw, self.placement, self.assembler.result(), self.usage, self.engine)


def tracker(gw: Gateway, placement: Placement | None, route: Any) -> StreamTracker:
    return StreamTracker(gw, placement, route)


async def get_program(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    principal = gw.principal(request)
    pid = request.path_params["pid"]
    if not is_session_id(pid):
        raise BadRequest("program id must match [A-Za-z0-9_.-]{1,128}", param="id")
    try:
        found = await gw.programs.store.get(principal.tenant, pid)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("state store unavailable") from exc
    if found is None:
        raise NotFound(f"No program '{pid}'", param="id", code="program_not_found")
    return JSONResponse(program_view(*found))


routes: list[Route] = [Route("/v1/programs/{pid}", get_program, methods=["GET"])]

__all__ = ["H_PROGRAM", "finish", "headers_of", "place", "routes", "tracker"]
