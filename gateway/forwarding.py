"""A session's requests go to the replica that owns the session, whatever the balancer does.

A load balancer spreads requests as it likes (round robin, least connections, the
kernel under ``serve --workers``), which splits an application over replicas: its
maps are admitted by two schedulers at different times, and a consumer registered
on one replica learns of inputs written on another through pub/sub and a re-read.
So each session has an owner, the live replica that rendezvous hashing of its id
picks (gateway/ownership.py, over ``Membership.targets``); a replica that receives
a request of a session it does not own relays it to the owner as it came (headers,
body; the answer streamed back as it arrives). The relayed request carries
``X-Parrot-Forwarded-By`` and is served where it lands: one hop at most, even
while two replicas disagree on who is live.

Failures cost the hop, never the request: an owner that cannot be reached (dead,
not yet out of the live set) was sent nothing, and the request is served here; an
owner that dies after taking it answers 502 (``replica_lost``), as a dead replica
does by a reset connection, and its accepted work is adopted as usual
(gateway/work.py). A client that leaves closes the relayed connection, which the
owner sees as its own client leaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.http1 import ConnectFailed, HttpClient, HttpError
from common.errors import EngineError
from common.serving import finished_before_disconnect

from .ownership import owner
from .responses import FastJSONResponse

if TYPE_CHECKING:
    from .metrics import Metrics
    from .replicas import Membership

log = logging.getLogger("parrot.forwarding")

FORWARDED_BY = b"x-parrot-forwarded-by"
_SESSION = b"x-parrot-session"
PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
# Not relayed: hop-by-hop, or set again by the next hop.
_REQUEST_SKIP = frozenset({b"host", b"content-length", b"connection", b"keep-alive", b"te",
                           b"transfer-encoding", b"upgrade", b"proxy-connection", b"expect",
                           FORWARDED_BY})
_RESPONSE_SKIP = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


def _request_headers(raw: Iterable[tuple[bytes, bytes]], replica: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        if k in _REQUEST_SKIP:
            continue
        name, value = k.decode("latin-1"), v.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    out[FORWARDED_BY.decode()] = replica
    return out


def _response_headers(head: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head.items()
            if k not in _RESPONSE_SKIP]


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client left first."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over the body already read, then the client's own."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


REPLICA_LOST = EngineError("the gateway replica serving this session went away before "
                           "answering; its accepted work continues on another replica",
                           code="replica_lost")


class SessionForwarding:
    """ASGI middleware, outermost: relays a session's requests to the session's owner."""

    def __init__(self, app: ASGIApp, membership: Membership, client: HttpClient,
                 metrics: Metrics, enabled: bool = True) -> None:
        self.app = app
        self.membership = membership
        self.client = client
        self.metrics = metrics
        self.enabled = enabled

    def _owner_url(self, scope: Scope) -> str | None:
        """The owner's URL when the request should go there; None to serve it here."""
        if not self.enabled or scope["method"] != "POST" or scope["path"] not in PATHS:
            return None
        targets = self.membership.targets
        if not targets or targets == [self.membership.id]:
            return None
        session = None
        for k, v in scope["headers"]:
            if k == _SESSION:
                session = v
            elif k == FORWARDED_BY:
                return None  # relayed once already: served here
        if session is None:
            return None
        target = owner(session.decode("latin-1"), targets)
        if target is None or target == self.membership.id:
            return None
        return self.membership.urls.get(target)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        base = self._owner_url(scope) if scope["type"] == "http" else None
        if base is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        query = scope.get("query_string", b"")
        url = base + scope["path"] + ("?" + query.decode("latin-1") if query else "")
        headers = _request_headers(scope["headers"], self.membership.id)
        relay = asyncio.ensure_future(self._relay(url, body, headers, scope, receive, send))
        try:
            if not await finished_before_disconnect(Request(scope, receive), relay):
                self.metrics.child(self.metrics.forwarded, "client_gone").inc()
        finally:
            relay.cancel()  # no-op once done; else the client left (or we are cancelled)
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        if not relay.cancelled() and relay.result() is False:
            await self.app(scope, _replay(body, receive), send)

    async def _relay(self, url: str, body: bytes, headers: dict[str, str], scope: Scope,
                     receive: Receive, send: Send) -> bool:
        """Relay to the owner and stream its answer back; False when the owner could not be
        reached (nothing was sent: serve it here)."""
        m = self.metrics
        try:
            status, head, chunks = await self.client.stream("POST", url, body, headers)
        except ConnectFailed as exc:
            log.info("owner at %s unreachable (%s); serving here", url, exc)
            m.child(m.forwarded, "owner_unreachable").inc()
            return False
        except HttpError as exc:
            log.warning("owner at %s failed before answering (%s)", url, exc)
            m.child(m.forwarded, "owner_lost").inc()
            await FastJSONResponse(REPLICA_LOST.body(), REPLICA_LOST.status)(scope, receive, send)
            return True
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            await send({"type": "http.response.start", "status": status,
                        "headers": _response_headers(head)})
            try:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except HttpError as exc:
                # Too late for a status: end the connection so the client sees a cut answer.
                log.warning("owner at %s failed mid-answer (%s)", url, exc)
                m.child(m.forwarded, "owner_lost").inc()
                raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        m.child(m.forwarded, "forwarded").inc()
        return True


__all__ = ["FORWARDED_BY", "PATHS", "SessionForwarding"]
