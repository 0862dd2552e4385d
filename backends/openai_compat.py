"""Client for any OpenAI-compatible engine (vLLM, llama.cpp, ...), over pooled httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from gateway.types import JSON

from .base import (
    Engine,
    EngineCall,
    EngineFailure,
    EngineInfo,
    EngineLoad,
    EngineRejected,
    EngineServerError,
    EngineTimeout,
    EngineUnreachable,
)

ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def _error_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": {"message": response.text[:500]}}


def _raise_for_status(response: httpx.Response, body: Any) -> None:
    if response.status_code < 400:
        return
    message = f"engine answered {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    elif isinstance(body, dict) and body.get("message"):
        message = str(body["message"])
    if response.status_code >= 500:
        raise EngineServerError(message, status=response.status_code, body=body)
    raise EngineRejected(message, status=response.status_code, body=body)


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    """Map transport errors onto the engine failure tree, in one place."""
    try:
        yield
    except EngineFailure:
        raise
    except httpx.TimeoutException as exc:
        if isinstance(exc, httpx.ConnectTimeout):
            raise EngineUnreachable(f"engine connect timeout: {exc}") from exc
        raise EngineTimeout(f"engine timeout: {exc!r}") from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise EngineUnreachable(f"engine unreachable: {exc!r}") from exc
    except httpx.HTTPError as exc:
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
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    def request_body(self, call: EngineCall) -> JSON:
        """The JSON sent to the engine; subclasses add engine-specific fields."""
        return call.body

    async def complete(self, call: EngineCall) -> JSON:
        async with _mapped_errors():
            response = await self._client.post(ROUTES[call.route], json=self.request_body(call))
            body = _error_body(response)
            _raise_for_status(response, body)
            if not isinstance(body, dict):
                raise EngineServerError("engine returned a non-object body")
            return body

    async def stream(self, call: EngineCall) -> AsyncIterator[JSON]:
        async with _mapped_errors():
            async with self._client.stream(
                "POST", ROUTES[call.route], json=self.request_body(call)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    body = _error_body(response)
                    _raise_for_status(response, body)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise EngineServerError(f"bad SSE chunk from engine: {data[:100]}") from exc
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        raise EngineServerError(str(chunk["error"]), body=chunk)
                    yield chunk

    async def _get_json(self, path: str) -> Any:
        async with _mapped_errors():
            response = await self._client.get(path)
            body = _error_body(response)
            _raise_for_status(response, body)
            return body

    async def info(self) -> EngineInfo:
        body = await self._get_json("/v1/models")
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict) and m.get("id")]
        return EngineInfo(models=models)

    async def load(self) -> EngineLoad | None:
        return None

    async def health(self) -> bool:
        try:
            async with _mapped_errors():
                response = await self._client.get("/health", timeout=2.0)
            if response.status_code == 404:  # many OpenAI servers lack /health
                await self._get_json("/v1/models")
                return True
            return response.status_code < 400
        except EngineFailure:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()
