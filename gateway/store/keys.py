"""Where a session lives in Redis (its keys and hash tag), and the store's two small
pieces of plumbing: Redis trouble as 503s at its surface, and per-key asyncio locks."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from common.errors import BadRequest, ServiceUnavailable
from common.ids import is_session_id
from gateway.notifier import channel_name
from gateway.redis_errors import unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class SessionKeys:
    """The Redis keys and pub/sub channel of one session (layout in the module docstring)."""

    meta: str
    vars: str
    reqs: str
    work: str
    channel: str
    tag: str

    @classmethod
    def of(cls, prefix: str, tenant: str, session: str) -> SessionKeys:
        if not is_session_id(session):
            raise BadRequest(f"invalid session id {session!r}", param="X-Parrot-Session")
        tag = session_tag(tenant, session)
        base = f"{prefix}:{{{tag}}}"
        return cls(f"{base}:meta", f"{base}:vars", f"{base}:reqs", f"{base}:work",
                   channel_name(prefix, tag), tag)

    @property
    def data(self) -> tuple[str, str, str, str]:
        return (self.meta, self.vars, self.reqs, self.work)


def session_tag(tenant: str, session: str) -> str:
    """The hash tag of a session: ``<percent-encoded tenant>:<session>``."""
    return f"{quote(tenant, safe='')}:{session}"


def parse_tag(tag: str) -> tuple[str, str]:
    """(tenant, session) of a `session_tag` (the tenant holds no ``:`` once encoded)."""
    tenant, _, session = tag.partition(":")
    return unquote(tenant), session


# ----------------------------------------------------------------------- I/O


def to_str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def store_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Redis connection trouble becomes ServiceUnavailable (503) at the store's surface."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if unavailable(exc):
                if args and hasattr(args[0], "outages"):
                    args[0].outages += 1
                raise ServiceUnavailable("state store unavailable") from exc
            raise

    return wrapper


class KeyedLocks:
    """asyncio locks by key, dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
