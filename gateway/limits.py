"""Per-tenant limits counted in Redis, so they hold across gateway replicas.

- requests/min and tokens/min: fixed one-minute windows (``INCRBY`` + ``EXPIRE``).
  A Redis outage fails open here: plain proxying keeps working, and it is logged.
  Tokens are charged up front from an estimate (prompt characters / 4 plus
  n x max_tokens) and corrected when the request ends by what the engine reports
  (``usage``: prompt + completion tokens): the difference goes to the window the
  estimate went to while it lasts; past it, only an excess is charged, to the
  current window. A request that ends without usage (it failed) keeps its estimate.
- concurrent sessions (``max_sessions``): a sorted set per tenant, member = session
  id, score = the time the session stops counting (its last activity + TTL).
  Admission is one Lua script (trim expired, refresh or count-and-add), so two
  replicas cannot both admit the last slot. Sessions need Redis anyway, so an
  outage here is a 503, not an open door.

Over a limit is 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis

from backends.base import Usage
from common.errors import RateLimited, ServiceUnavailable
from common.types import JSON

from .auth import Principal
from .redis_errors import failure as redis_failure

log = logging.getLogger("parrot.limits")

WINDOW_S = 60

# KEYS[1] tenant zset; ARGV: now, expiry, cap, session, key ttl.
# Returns -1 when admitted, else the earliest expiry among the live sessions.
_ADMIT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if redis.call('ZSCORE', key, ARGV[4]) or redis.call('ZCARD', key) < tonumber(ARGV[3]) then
  redis.call('ZADD', key, ARGV[2], ARGV[4])
  redis.call('EXPIRE', key, ARGV[5])
  return -1
end
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return first[2]
"""


@dataclass(frozen=True)
class Charge:
    """Tokens charged up front to one tenant's window, to be corrected by real usage."""

    tenant: str
    window: int
    tokens: int


def correction(charge: Charge, used: int, now: float) -> tuple[int, int] | None:
    """(window, tokens to add) once ``used`` tokens were really spent; None: nothing.
    Pure: the charged window takes the difference (a refund included) while it is the
    current one; later, an excess goes to the current window and a refund is dropped."""
    delta = used - charge.tokens
    current = window_of(now)[0]
    if delta == 0:
        return None
    if current == charge.window:
        return charge.window, delta
    return (current, delta) if delta > 0 else None


@dataclass(frozen=True)
class WindowDecision:
    """Pure outcome of one fixed-window count."""

    allowed: bool
    retry_after_s: float


def window_of(now: float) -> tuple[int, float]:
    """(window index, seconds until the next window) for a fixed one-minute window."""
    return int(now // WINDOW_S), WINDOW_S - (now % WINDOW_S)


def judge(count: int | None, limit: int, now: float) -> WindowDecision:
    """``count`` after this request's increment (None: store down, fail open)."""
    if count is None or count <= limit:
        return WindowDecision(True, 0.0)
    return WindowDecision(False, window_of(now)[1])


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, prefix: str = "parrot") -> None:
        self.redis = redis
        self.prefix = prefix
        self._pending: set[asyncio.Task[int | None]] = set()  # corrections in flight
        # By SHA1 (EVALSHA, reloaded after a Redis restart), as the session store's scripts.
        self._admit = redis.register_script(_ADMIT) if redis is not None else None

    def _key(self, tenant: str, *parts: object) -> str:
        return ":".join([self.prefix, "rl", quote(tenant, safe=""), *map(str, parts)])

    async def _bump(self, key: str, amount: int) -> int | None:
        if self.redis is None:
            return None
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incrby(key, amount)
            pipe.expire(key, WINDOW_S + 1)
            count, _ = await pipe.execute()
            return int(count)
        except Exception as exc:
            if not redis_failure(exc):
                raise
            log.warning("rate limit store unavailable (%s); allowing request", type(exc).__name__)
            return None

    async def check_request(self, principal: Principal, body: JSON) -> Charge | None:
        """429 when the tenant is over its requests/min or tokens/min; the tokens charged
        (to correct with `settle` once the engine reports usage), if any."""
        spec = principal.spec
        if spec is None or (spec.rpm is None and spec.tpm is None):
            return None
        now = time.time()
        window, _ = window_of(now)
        if spec.rpm is not None:
            n = await self._bump(self._key(principal.tenant, "rpm", window), 1)
            d = judge(n, spec.rpm, now)
            if not d.allowed:
                raise RateLimited(
                    f"tenant over {spec.rpm} requests per minute", retry_after=d.retry_after_s
                )
        if spec.tpm is not None:
            estimate = requested_tokens(body)
            n = await self._bump(self._key(principal.tenant, "tpm", window), estimate)
            d = judge(n, spec.tpm, now)
            if not d.allowed:
                raise RateLimited(
                    f"tenant over {spec.tpm} tokens per minute", retry_after=d.retry_after_s
                )
            if n is not None:
                return Charge(principal.tenant, window, estimate)
        return None

    def settler(self, charge: Charge | None) -> Callable[[Usage], None] | None:
        """The ``on_usage`` hook of a request charged ``charge``: corrects the charge
        (in the background) by the usage the engine reports."""
        if charge is None:
            return None

        def settle(usage: Usage) -> None:
            fix = correction(charge, usage.prompt_tokens + usage.completion_tokens, time.time())
            if fix is not None:
                task = asyncio.create_task(self._bump(self._key(charge.tenant, "tpm", fix[0]), fix[1]))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

        return settle

    # -- concurrent sessions ------------------------------------------------------------
    def _sessions_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{{{quote(tenant, safe='')}}}:sessions"

    async def admit_session(self, principal: Principal, session: str, ttl_s: float) -> None:
        """Count ``session`` as live for ``ttl_s`` more seconds; 429 past ``max_sessions``."""
        spec = principal.spec
        if spec is None or spec.max_sessions is None or self.redis is None:
            return
        now = time.time()
        try:
            assert self._admit is not None
            res: Any = await self._admit(
                keys=[self._sessions_key(principal.tenant)],
                args=[now, now + ttl_s, spec.max_sessions, session, int(ttl_s) + 1],
            )
        except Exception as exc:
            if not redis_failure(exc):
                raise
            raise ServiceUnavailable("state store unavailable") from exc
        if int(float(res)) == -1:
            return
        raise RateLimited(
            f"tenant has {spec.max_sessions} live sessions (max_sessions); delete one or wait",
            retry_after=max(1.0, float(res) - now),
            code="too_many_sessions",
        )

    async def release_session(self, principal: Principal, session: str) -> None:
        """The session was deleted: free its slot (best effort)."""
        spec = principal.spec
        if spec is None or spec.max_sessions is None or self.redis is None:
            return
        try:
            await self.redis.zrem(self._sessions_key(principal.tenant), session)
        except Exception as exc:
            if not redis_failure(exc):
                raise
            log.warning("could not release a session slot (%s)", type(exc).__name__)


def requested_tokens(body: JSON) -> int:
    """A cheap upper-bound estimate: prompt characters / 4 plus max_tokens."""
    chars = 0
    messages: Any = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            chars += len(c) if isinstance(c, str) else len(str(c or ""))
    prompt = body.get("prompt")
    if prompt is not None:
        chars += len(str(prompt))
    mt = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    n = body.get("n")
    per_choice = mt if isinstance(mt, int) and not isinstance(mt, bool) else 256
    return chars // 4 + per_choice * (n if isinstance(n, int) and 0 < n <= 128 else 1)

