"""Client for any OpenAI-compatible engine (vLLM, llama.cpp, ...), over ``backends.http1``.

Every proxied request makes one engine call, so the client's own CPU is paid per
request. Measured on this project: httpx's pool cost ~1 ms per call at 16-32 open
connections (it scans every pooled connection), aiohttp ~150 us of Python each way;
``http1`` formats a request as one write and parses answers with httptools (the C
parser uvicorn uses), which is what an engine client needs and no more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

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
from .http1 import ConnectFailed, HttpClient, HttpError, ReadTimeout

ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "generate": "/generate"}
JSON_HEADERS = {"Content-Type": "application/json"}
# Idle pooled connections are dropped before the server's keep-alive timeout would close
# them under a new request (uvicorn, which SGLang runs on, closes after 5 s): such a race
# fails a request with "Server disconnected".
KEEPALIVE_S = 4.0


def _headers(call: EngineCall) -> Mapping[str, str]:
    return JSON_HEADERS if not call.headers else {**call.headers, **JSON_HEADERS}


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
    except ReadTimeout as exc:
        raise EngineTimeout(f"engine timeout: {exc}") from exc
    except ConnectFailed as exc:  # no connection at all
        raise EngineConnectFailed(f"engine unreachable: {exc}") from exc
    except (HttpError, OSError) as exc:  # the connection broke
        raise EngineUnreachable(f"engine unreachable: {exc!r}") from exc
    except asyncio.TimeoutError as exc:
        raise EngineTimeout("engine timeout") from exc


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
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = HttpClient(connect_timeout=connect_timeout, read_timeout=timeout,
                                keepalive_s=KEEPALIVE_S)

    def _call_headers(self, call: EngineCall) -> Mapping[str, str]:
        headers = _headers(call)
        return {**self._auth, **headers} if self._auth else headers

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
            r = await self._http.request("POST", f"{self.url}/{path}",
                                         orjson.dumps(self.request_body(call)),
                                         dict(self._call_headers(call)))
            body = _parse_body(r.body)
            _raise_for_status(r.status, body)
        if not isinstance(body, dict):
            raise EngineServerError("engine returned a non-object body")
        return body

    async def stream(self, call: EngineCall) -> AsyncIterator[JSON]:
        path = self._path(call)
        async with _mapped_errors():
            status, _, chunks = await self._http.stream(
                "POST", f"{self.url}/{path}", orjson.dumps(self.request_body(call)),
                dict(self._call_headers(call)),
            )
            try:
                if status >= 400:
                    _raise_for_status(status, _parse_body(b"".join([c async for c in chunks])))
                buf = b""
                async for data in chunks:
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        if not raw.startswith(b"data:"):
                            continue
                        payload = raw[5:].strip()
                        if payload == b"[DONE]":
                            return
                        try:
                            chunk = orjson.loads(payload)
                        except ValueError as exc:
                            raise EngineServerError(
                                f"bad SSE chunk from engine: {payload[:100]!r}") from exc
                        if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                            raise EngineServerError(str(chunk["error"]), body=chunk)
                        yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
            raise EngineUnreachable("engine closed the stream before [DONE]")

    async def _get_json(self, path: str, timeout: float | None = None) -> Any:
        async with _mapped_errors():
            r = await self._http.request("GET", self.url + path, None, self._auth or None, timeout)
            body = _parse_body(r.body)
            _raise_for_status(r.status, body)
            return body

    async def _post_ok(self, path: str) -> bool:
        try:
            async with _mapped_errors():
                r = await self._http.request("POST", self.url + path, b"", self._auth or None)
                return r.status < 400
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
                r = await self._http.request("GET", self.url + "/health", None, self._auth or None,
                                             timeout=2.0)
                status = r.status
            if status == 404:  # many OpenAI servers lack /health
                await self._get_json("/v1/models", timeout=2.0)
                return True
            return status < 400
        except EngineFailure:
            return False

    async def aclose(self) -> None:
        await self._http.close()
