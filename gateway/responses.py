"""How answers reach the client: SSE encoding, primed streams, disconnect watching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from common.errors import ParrotError
from common.serving import finished_before_disconnect
from common.types import JSON

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's code: nobody reads this response


class FastJSONResponse(JSONResponse):
    """JSONResponse rendered by orjson (several times faster than json.dumps on the
    completion bodies that every proxied request returns)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def unless_client_left(request: Request, call: Awaitable[T]) -> T | None:
    """Run a non-streaming ``call`` while watching the client: None (and the call
    cancelled, freeing its engine, which aborts on our disconnect) if the client went
    away first; the handler then answers ``CLIENT_CLOSED``."""
    task = asyncio.ensure_future(call)
    try:
        if not await finished_before_disconnect(request, task):
            task.cancel()
            return None
    except asyncio.CancelledError:
        task.cancel()
        raise
    return task.result()


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def sse_stream(chunks: AsyncIterator[JSON]) -> AsyncIterator[bytes]:
    """Encode chunks as SSE; a failure after the headers went out becomes an error event."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        try:
            async for chunk in chunks:
                yield sse(chunk)
        except ParrotError as exc:
            yield sse(exc.body())
    yield SSE_DONE


async def primed(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pull the first chunk before the response starts, so early errors get a real status."""
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return _no_chunks()

    async def rest() -> AsyncIterator[Any]:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            yield first
            async for c in chunks:
                yield c

    return rest()


async def _no_chunks() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator when the response ends, however it ends. Starlette leaves
    a stream the client left suspended until garbage collection (with a traceback cycle,
    seconds later); closing it now runs the producers' ``finally``, which cancels the
    engine call nobody reads any more."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def streaming(chunks: AsyncIterator[JSON]) -> StreamingResponse:
    return ClosingStreamingResponse(sse_stream(chunks), media_type="text/event-stream",
                                    headers=SSE_HEADERS)
