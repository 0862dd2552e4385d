"""Every log line of a request carries its id, also from tasks it spawned."""

from __future__ import annotations

import asyncio
import io
import logging

from gateway import logs
from gateway.app import RequestIdMiddleware
from gateway.metrics import Metrics


def test_log_lines_carry_the_request_id() -> None:
    seen: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        async def background() -> None:
            seen.append(logs.request_id.get())
            logging.getLogger("parrot.test").warning("inside a spawned task")

        await asyncio.create_task(background())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("parrot.test")
    logger.addHandler(handler)
    try:
        mw = RequestIdMiddleware(app, Metrics())
        sent: list[dict] = []

        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            sent.append(message)

        scope = {"type": "http", "path": "/health", "headers": [(b"x-request-id", b"rid-42")]}
        asyncio.run(mw(scope, receive, send))
    finally:
        logger.removeHandler(handler)
    assert seen == ["rid-42"]
    assert "[rid-42]" in stream.getvalue()
    assert (b"x-request-id", b"rid-42") in sent[0]["headers"]
    assert logs.request_id.get() == "-"  # reset after the request
