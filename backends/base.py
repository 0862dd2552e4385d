"""The engine interface: the gateway meets every engine (SGLang, any OpenAI-compatible
server, or the simulated engine in memory via ``httpx.ASGITransport``) here.

Failures are reported as a small tree mapped later to HTTP by the gateway:

    EngineFailure
    ├── EngineUnreachable   the connection broke (reset, closed) (retryable)
    │   └── EngineConnectFailed  no connection could be made (refused, no route): down
    ├── EngineTimeout       no answer in time
    ├── EngineServerError   5xx from the engine (retryable before the first token)
    └── EngineRejected      4xx from the engine: the request itself is bad (not retried)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from common.types import JSON


class EngineFailure(Exception):
    retryable = False

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class EngineUnreachable(EngineFailure):
    retryable = True


class EngineConnectFailed(EngineUnreachable):
    """Not even a TCP connection: nothing listens there (the process is gone). Unlike a
    broken connection (a keep-alive race, a reset under load) this says the engine is down."""


class EngineTimeout(EngineFailure):
    retryable = False


class EngineServerError(EngineFailure):
    retryable = True


class EngineRejected(EngineFailure):
    retryable = False


EngineRoute = Literal["chat", "completion", "generate"]
"""The OpenAI routes, and SGLang's native ``/generate`` (only ``sglang`` engines have it)."""


@dataclass
class EngineCall:
    """One request to an engine: OpenAI-style, or SGLang-native for ``route="generate"``.

    ``body`` is the JSON body as the client sent it (after placeholder
    substitution); unknown fields travel through unchanged.
    """

    route: EngineRoute
    body: JSON
    rid: str
    priority: int | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass
class EngineInfo:
    models: list[str] = field(default_factory=list)
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    chunked_prefill_size: int | None = None  # prompt tokens prefilled per forward pass


@dataclass
class EngineLoad:
    num_reqs: int = 0
    num_waiting_reqs: int = 0
    num_tokens: int = 0


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def of_chunk(cls, chunk: Any) -> Usage | None:
        """Usage carried by a response or stream chunk: OpenAI's ``usage``, or the
        ``meta_info`` of a finished SGLang ``/generate`` answer."""
        if not isinstance(chunk, dict):
            return None
        if "usage" in chunk:
            return cls.from_openai(chunk.get("usage"))
        meta = chunk.get("meta_info")
        if isinstance(meta, dict) and meta.get("finish_reason") is not None:
            return cls(prompt_tokens=int(meta.get("prompt_tokens") or 0),
                       completion_tokens=int(meta.get("completion_tokens") or 0),
                       cached_tokens=int(meta.get("cached_tokens") or 0))
        return None

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(cached or 0),
        )


class Engine(ABC):
    """An inference engine reachable over HTTP."""

    url: str
    kind: str

    @abstractmethod
    async def complete(self, call: EngineCall) -> JSON:
        """Send a non-streaming request; return the engine's JSON response."""

    @abstractmethod
    def stream(self, call: EngineCall) -> AsyncIterator[JSON]:
        """Send a streaming request; yield each SSE chunk as parsed JSON."""

    @property
    def has_generate(self) -> bool:
        """Whether the engine serves SGLang's native ``/generate`` (``route="generate"``
        calls to one that does not fail with :class:`EngineRejected`, status 404)."""
        return False

    @abstractmethod
    async def info(self) -> EngineInfo: ...

    @abstractmethod
    async def load(self) -> EngineLoad | None: ...

    @abstractmethod
    async def health(self) -> bool: ...

    async def flush_cache(self) -> bool:
        return False

    async def aclose(self) -> None:
        return None
