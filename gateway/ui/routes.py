"""Routes of the session view.

    GET  /ui                          the tenant's recent sessions (page)
    GET  /ui/api/sessions             ... as JSON
    GET  /ui/sessions/{sid}           one session's page: DAG, live statuses, timeline
    GET  /ui/api/sessions/{sid}       its data, polled by the page
    GET  /ui/static/...               the page's JS and CSS (package data, no build step)
    POST /v1/sessions/{sid}/view      mint a short-lived signed link to the page

Auth is the API's: ``Authorization: Bearer <key>`` on the page and on its data
calls (an auth proxy or the browser adds it), or a signed link's token — in the
page URL (``?token=``) and, from the page's script, in ``X-Parrot-View-Token``.
A session of another tenant is a 404, as in the API.
"""

from __future__ import annotations

import functools
import html
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from common.errors import BadRequest, NotFound
from common.ids import is_session_id
from common.types import JSON

from . import links

if TYPE_CHECKING:
    from ..wiring import Gateway

log = logging.getLogger("parrot.ui")

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-parrot-view-token"
PREVIEW_CHARS = 240  # of a variable's value shown by the page (values may be 1 MiB)
MAX_LIST = 500


def _gw(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _link_secret(request: Request) -> links.LinkSecret:
    state = request.app.state
    secret = getattr(state, "ui_link_secret", None)
    if secret is None:
        gw = _gw(request)
        secret = state.ui_link_secret = links.LinkSecret(gw.redis, gw.settings.ui_secret)
    return secret  # type: ignore[no-any-return]


def _sid(request: Request) -> str:
    sid: str = request.path_params["sid"]
    if not is_session_id(sid):
        raise BadRequest("session id must match [A-Za-z0-9_.-]{1,128}", param="session")
    return sid


async def _viewer(request: Request, sid: str) -> tuple[str, str | None]:
    """(tenant, token): a signed link's token when one is presented, else the API key."""
    token = request.query_params.get("token") or request.headers.get(TOKEN_HEADER)
    if token:
        secret = await _link_secret(request).get()
        return links.verify(secret, token, sid, time.time()), token
    return _gw(request).principal(request).tenant, None


@functools.lru_cache(maxsize=4)
def _template(name: str) -> str:
    return (STATIC / name).read_text()


def _page(request: Request, name: str, config: JSON) -> HTMLResponse:
    """A static page with its base URL and a JSON config filled in (both escaped)."""
    base = request.scope.get("root_path", "") + "/ui/"
    blob = orjson.dumps(config).decode()
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = _template(name).replace("{{base}}", html.escape(base, quote=True))
    text = text.replace("{{config}}", blob)
    headers = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",  # a signed link must not leak via Referer
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    }
    return HTMLResponse(text, headers=headers)


def view_payload(graph: JSON, now: float) -> JSON:
    """The graph as the page needs it: every field the API shows, but variable values
    cut to a preview (the page polls it; values may be large)."""
    variables = []
    for v in graph.get("variables", []):
        value = v.get("value")
        variables.append({
            "name": v["name"], "status": v["status"], "error": v.get("error"),
            "preview": None if value is None else value[:PREVIEW_CHARS],
            "chars": None if value is None else len(value),
        })
    return {**graph, "variables": variables, "now": now}


# ------------------------------------------------------------------ handlers


async def index_page(request: Request) -> Response:
    principal = _gw(request).principal(request)
    return _page(request, "index.html", {"tenant": principal.tenant})


async def list_sessions(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    try:
        limit = int(request.query_params.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest(f"limit must be an integer in [1, {MAX_LIST}]", param="limit")
    sessions = await gw.index.recent(principal.tenant, limit)
    return JSONResponse({"tenant": principal.tenant, "sessions": sessions})


async def session_page(request: Request) -> Response:
    gw = _gw(request)
    sid = _sid(request)
    tenant, token = await _viewer(request, sid)
    if not await gw.store.session_exists(tenant, sid):
        raise NotFound(f"session '{sid}' not found", code="session_not_found")
    return _page(request, "session.html", {
        "session": sid, "data": f"api/sessions/{sid}", "token": token, "tenant": tenant,
    })


async def session_data(request: Request) -> Response:
    gw = _gw(request)
    sid = _sid(request)
    tenant, _ = await _viewer(request, sid)
    graph = await gw.sessions.graph_json(tenant, sid)
    return JSONResponse(view_payload(graph, time.time()), headers={"Cache-Control": "no-store"})


async def mint_view_link(request: Request) -> Response:
    gw = _gw(request)
    principal = gw.principal(request)
    sid = _sid(request)
    if not await gw.store.session_exists(principal.tenant, sid):
        raise NotFound(f"session '{sid}' not found", code="session_not_found")
    expires_at = int(time.time()) + gw.settings.ui_link_ttl_s
    token = links.sign(await _link_secret(request).get(), principal.tenant, sid, expires_at)
    rel = f"ui/sessions/{sid}?token={token}"
    log.info("view link for session %s minted (expires %d)", sid, expires_at)
    return JSONResponse({
        "session": sid, "path": f"{request.scope.get('root_path', '')}/{rel}",
        "url": f"{request.base_url}{rel}", "expires_at": expires_at,
    })


routes = [
    Route("/ui", index_page, methods=["GET"]),
    Route("/ui/api/sessions", list_sessions, methods=["GET"]),
    Route("/ui/sessions/{sid}", session_page, methods=["GET"]),
    Route("/ui/api/sessions/{sid}", session_data, methods=["GET"]),
    Route("/v1/sessions/{sid}/view", mint_view_link, methods=["POST"]),
    Mount("/ui/static", app=StaticFiles(directory=STATIC), name="ui-static"),
]
