"""Client for any OpenAI-compatible engine (vLLM, llama.cpp, ...), over pooled aiohttp.

aiohttp rather than httpx here, on measurement: httpcore's pool scans every
pooled connection (with a socket poll each) for every request, which cost
about 1 ms of CPU per proxied request at 16-32 open connections and made the
engine client the gateway's largest CPU cost. aiohttp's connector is O(1) per
request and its HTTP parser is in C. Clients elsewhere still use httpx.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from common.types import JSON

from .base import (
    Engine,
    EngineCall,
    EngineConnectFailed,
    EngineFailure,
    EngineInfo,
    EngineLoad,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    EngineUnreachable,
)

ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "generate": "/generate"}
JSON_HEADERS = {"Content-Type": "application/json"}
# Idle pooled connections are dropped before the server's keep-alive timeout would close
# them under a new request (uvicorn, which SGLang runs on, closes after 5 s; aiohttp's
# default keeps them 15 s): such a race fails a request with "Server disconnected".
KEEPALIVE_S = 4.0


def _parse_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except ValueError:
        return {"error": {"message": raw[:500].decode("utf-8", "replace")}}


def _raise_for_status(status: int, body: Any) -> None:
    if status < 400:
        return
    message = f"engine answered {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    elif isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
    if status >= 500:
        raise EngineServerError(message, status=status, body=body)
    raise EngineRejected(message, status=status, body=body)


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    """Map transport errors onto the engine failure tree, in one place."""
    try:
        yield
    except EngineFailure:
        raise
    except aiohttp.ServerTimeoutError as exc:
        raise EngineTimeout(f"engine timeout: {exc!r}") from exc
    except aiohttp.ClientConnectorError as exc:  # no connection at all
        raise EngineConnectFailed(f"engine unreachable: {exc!r}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
            aiohttp.ClientPayloadError) as exc:  # connection broke
        raise EngineUnreachable(f"engine unreachable: {exc!r}") from exc
    except asyncio.TimeoutError as exc:
        raise EngineTimeout("engine timeout") from exc
    except aiohttp.ClientError as exc:
        raise EngineServerError(f"engine transport error: {exc!r}") from exc


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        timeout: float = 600.0,
        max_connections: int = 1024,
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the running event loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.url + "/",
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300,
                                               keepalive_timeout=KEEPALIVE_S),
                cookie_jar=aiohttp.DummyCookieJar(),  # engines set no cookies; skip the jar per request
            )
        return self._session

    def request_body(self, call: EngineCall) -> JSON:
        """The JSON sent to the engine; subclasses add engine-specific fields. A streamed
        OpenAI request always asks for usage at the end (the gateway accounts with it;
        ``Completions.stream`` drops it again for clients that did not ask)."""
        body = call.body
        if call.stream and call.route in ("chat", "completion"):
            opts = body.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage")):
                body = {**body, "stream_options": {**(opts if isinstance(opts, dict) else {}),
                                                   "include_usage": True}}
        return body

    def _path(self, call: EngineCall) -> str:
        if call.route == "generate" and not self.has_generate:
            raise EngineRejected(
                f"this engine ({self.kind} kind, {self.url}) has no SGLang /generate route; "
                "use /v1/completions, or run the gateway over SGLang engines (--backend-kind sglang)",
                status=404, body={"error": {"message": "no /generate on an OpenAI-compatible engine",
                                            "code": "route_not_supported"}})
        return ROUTES[call.route].lstrip("/")

    async def complete(self, call: EngineCall) -> JSON:
        path = self._path(call)
        async with _mapped_errors():
            async with self.session.post(
                path, data=orjson.dumps(self.request_body(call)), headers=JSON_HEADERS,
            ) as response:
                body = _parse_body(await response.read())
                _raise_for_status(response.status, body)
        if not isinstance(body, dict):
            raise EngineServerError("engine returned a non-object body")
        return body

    async def stream(self, call: EngineCall) -> AsyncIterator[JSON]:
        path = self._path(call)
        async with _mapped_errors():
            async with self.session.post(
                path, data=orjson.dumps(self.request_body(call)), headers=JSON_HEADERS,
            ) as response:
                if response.status >= 400:
                    _raise_for_status(response.status, _parse_body(await response.read()))
                async for raw in response.content:
                    if not raw.startswith(b"data:"):
                        continue
                    data = raw[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except ValueError as exc:
                        raise EngineServerError(f"bad SSE chunk from engine: {data[:100]!r}") from exc
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        raise EngineServerError(str(chunk["error"]), body=chunk)
                    yield chunk
            raise EngineUnreachable("engine closed the stream before [DONE]")

    async def _get_json(self, path: str, timeout: float | None = None) -> Any:
        async with _mapped_errors():
            kw: dict[str, Any] = {}
            if timeout is not None:
                kw["timeout"] = aiohttp.ClientTimeout(total=timeout)
            async with self.session.get(path.lstrip("/"), **kw) as response:
                body = _parse_body(await response.read())
                _raise_for_status(response.status, body)
                return body

    async def _post_ok(self, path: str) -> bool:
        try:
            async with _mapped_errors():
                async with self.session.post(path.lstrip("/")) as response:
                    await response.read()
                    return response.status < 400
        except EngineFailure:
            return False

    async def info(self) -> EngineInfo:
        body = await self._get_json("/v1/models")
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict) and m.get("id")]
        return EngineInfo(models=models)

    async def load(self) -> EngineLoad | None:
        return None

    async def health(self) -> bool:
        try:
            async with _mapped_errors():
                async with self.session.get(
                    "health", timeout=aiohttp.ClientTimeout(total=2.0)
                ) as response:
                    await response.read()
                    status = response.status
            if status == 404:  # many OpenAI servers lack /health
                await self._get_json("/v1/models", timeout=2.0)
                return True
            return status < 400
        except EngineFailure:
            return False

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
