"""Session endpoints: set and read variables (long poll), the graph, cancellation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.errors import BadRequest, NotFound
from common.ids import is_session_id, is_variable_name

from .validation import parse_json

if TYPE_CHECKING:
    from .wiring import Gateway


class PutVariable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: StrictStr


def _ids(request: Request, with_name: bool = False) -> tuple[str, str]:
    sid = request.path_params["sid"]
    if not is_session_id(sid):
        raise BadRequest("session id must match [A-Za-z0-9_.-]{1,128}", param="session")
    name = request.path_params.get("name", "")
    if with_name and not is_variable_name(name):
        raise BadRequest("variable name must match [A-Za-z_][A-Za-z0-9_]{0,63}", param="name")
    return sid, name


def _gw(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def put_variable(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    sid, name = _ids(request, with_name=True)
    body = parse_json(await request.body(), gw.settings.max_body_bytes)
    try:
        value = PutVariable.model_validate(body).value
    except ValidationError as exc:
        raise BadRequest('body must be {"value": "<string>"}', param="value") from exc
    await gw.limits.admit_session(principal, sid, gw.settings.session_ttl_s)
    var = await gw.store.put_variable(principal.tenant, sid, name, value)
    return JSONResponse(var.to_public())


async def get_variable(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    sid, name = _ids(request, with_name=True)
    raw_wait = request.query_params.get("wait", "0")
    try:
        wait = float(raw_wait)
    except ValueError:
        wait = -1.0
    if not (0 <= wait <= gw.settings.max_wait_s):
        raise BadRequest(f"wait must be seconds in [0, {gw.settings.max_wait_s:.0f}]", param="wait")
    var = await gw.store.get_variable(principal.tenant, sid, name)
    if var is None:
        raise NotFound(f"variable '{name}' not found in session '{sid}'", code="variable_not_found")
    if wait > 0 and var.status == "pending":
        states = await gw.store.wait_variables(principal.tenant, sid, [name], wait)
        var = states.get(name) or var
    return JSONResponse(var.to_public())


async def get_session(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    sid, _ = _ids(request)
    return JSONResponse(await gw.sessions.graph_json(principal.tenant, sid))


async def delete_session(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    sid, _ = _ids(request)
    if not await gw.store.session_exists(principal.tenant, sid):
        raise NotFound(f"session '{sid}' not found", code="session_not_found")
    await asyncio.shield(gw.sessions.cancel_session(principal.tenant, sid))
    await gw.limits.release_session(principal, sid)
    await gw.index.forget(principal.tenant, sid)
    return JSONResponse({"session": sid, "deleted": True})


routes = [
    Route("/v1/sessions/{sid}/variables/{name}", put_variable, methods=["PUT"]),
    Route("/v1/sessions/{sid}/variables/{name}", get_variable, methods=["GET"]),
    Route("/v1/sessions/{sid}", get_session, methods=["GET"]),
    Route("/v1/sessions/{sid}", delete_session, methods=["DELETE"]),
]
