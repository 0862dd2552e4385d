"""Stored Responses API responses in Redis, per tenant, with the session TTL.

One key per response, namespaced and hash-tagged like the session keys so
Redis Cluster places it by ``{tenant:response}``::

    <prefix>:{<tenant>:<response id>}:response    string  JSON record

<tenant> is percent-encoded and response ids are ``[A-Za-z0-9_-]``, so two
tenants never share a key: another tenant's id reads as absent (404). The
record holds the response object (what ``GET`` returns), its input items, and
the whole chat conversation up to and including its output (what a later
``previous_response_id`` continues), so a chained turn is one read.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import ServiceUnavailable
from common.types import JSON

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _unavailable(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Redis connection trouble becomes ServiceUnavailable (503)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable("state store unavailable") from exc

    return wrapper


@dataclass
class StoredResponse:
    response: JSON
    conversation: list[JSON] = field(default_factory=list)
    """Chat messages through this response's output (instructions excluded: they do not chain)."""
    input_items: list[JSON] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps({"response": self.response, "conversation": self.conversation,
                             "input_items": self.input_items})

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredResponse:
        d = orjson.loads(raw)
        return cls(d["response"], d.get("conversation") or [], d.get("input_items") or [])


class ResponseStore:
    def __init__(self, redis: Redis, *, ttl_s: int = 3600, prefix: str = "parrot") -> None:
        if any(c in prefix for c in "{}*?[]"):
            raise ValueError(f"prefix {prefix!r} must not contain braces or glob characters")
        self._redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._writers: set[asyncio.Future[Any]] = set()

    def keep(self, writer: asyncio.Future[Any]) -> None:
        """Hold a background writer (an async turn's final save) until it is done."""
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)

    def key(self, tenant: str, response_id: str) -> str | None:
        """The key of ``response_id`` for ``tenant``; None for an id no response can have."""
        if RESPONSE_ID.fullmatch(response_id) is None:
            return None
        return f"{self.prefix}:{{{quote(tenant, safe='')}:{response_id}}}:response"

    @_unavailable
    async def put(self, tenant: str, record: StoredResponse) -> None:
        key = self.key(tenant, record.response["id"])
        assert key is not None, "response ids are generated well-formed"
        await self._redis.set(key, record.to_json(), ex=self.ttl_s)

    @_unavailable
    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        key = self.key(tenant, response_id)
        raw = await self._redis.get(key) if key else None
        return StoredResponse.from_json(raw) if raw is not None else None

    @_unavailable
    async def delete(self, tenant: str, response_id: str) -> bool:
        key = self.key(tenant, response_id)
        return bool(key and await self._redis.delete(key))
