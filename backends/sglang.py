"""Client for SGLang's HTTP server (and the simulated engine, which speaks the same API).

Adds SGLang's extra request fields ``rid`` and ``priority`` (higher = more urgent;
the server runs with ``--enable-priority-scheduling``), reads capacity from
``/get_server_info`` and load from ``/get_load`` (or ``/v1/loads``), and serves
the native ``/generate`` route (``EngineCall.route == "generate"``).
"""

from __future__ import annotations

from typing import Any

from common.types import JSON

from .base import EngineCall, EngineFailure, EngineInfo, EngineLoad
from .openai_compat import OpenAIEngine


def _first(obj: Any) -> Any:
    return obj[0] if isinstance(obj, list) and obj else obj


class SGLangEngine(OpenAIEngine):
    kind = "sglang"

    @property
    def has_generate(self) -> bool:
        return True

    def request_body(self, call: EngineCall) -> JSON:
        body = dict(super().request_body(call))
        body.setdefault("rid", call.rid)
        if call.priority is not None:
            body["priority"] = call.priority
        return body

    async def info(self) -> EngineInfo:
        base = await super().info()
        try:
            server = await self._get_json("/get_server_info")
        except EngineFailure:
            return base
        server = _first(server) if isinstance(server, list) else server
        if isinstance(server, dict):
            base.max_running_requests = _as_int(server.get("max_running_requests"))
            base.max_total_tokens = _as_int(
                server.get("max_total_num_tokens") or server.get("max_total_tokens")
            )
            chunk = _as_int(server.get("chunked_prefill_size"))
            base.chunked_prefill_size = chunk if chunk and chunk > 0 else None
        return base

    async def load(self) -> EngineLoad | None:
        for path in ("/get_load", "/v1/loads"):
            try:
                body = await self._get_json(path)
            except EngineFailure:
                continue
            body = _first(body)
            if isinstance(body, dict) and "loads" in body:
                body = _first(body["loads"])
            if isinstance(body, dict):
                return EngineLoad(
                    num_reqs=_as_int(body.get("num_reqs")) or 0,
                    num_waiting_reqs=_as_int(body.get("num_waiting_reqs")) or 0,
                    num_tokens=_as_int(body.get("num_tokens")) or 0,
                )
        return None

    async def flush_cache(self) -> bool:
        return await self._post_ok("/flush_cache")


def _as_int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def make_engine(url: str, kind: str, **kw: Any) -> OpenAIEngine:
    return SGLangEngine(url, **kw) if kind == "sglang" else OpenAIEngine(url, **kw)
