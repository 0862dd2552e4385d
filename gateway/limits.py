"""Per-tenant rate limits (requests/min, tokens/min), counted in Redis so they hold
across replicas. Fixed one-minute windows; a Redis outage fails open (plain
proxying keeps working) and is logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.types import JSON

from .auth import Principal
from .errors import RateLimited

log = logging.getLogger("parrot.limits")


class RateLimiter:
    def __init__(self, redis: aioredis.Redis | None, prefix: str = "parrot") -> None:
        self.redis = redis
        self.prefix = prefix

    async def _bump(self, key: str, amount: int) -> int | None:
        if self.redis is None:
            return None
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incrby(key, amount)
            pipe.expire(key, 61)
            count, _ = await pipe.execute()
            return int(count)
        except (RedisError, OSError) as exc:
            log.warning("rate limit store unavailable (%s); allowing request", type(exc).__name__)
            return None

    async def check_request(self, principal: Principal, body: JSON) -> None:
        spec = principal.spec
        if spec is None or (spec.rpm is None and spec.tpm is None):
            return
        window = int(time.time() // 60)
        retry_after = 60 - (time.time() % 60)
        if spec.rpm is not None:
            n = await self._bump(f"{self.prefix}:rl:{principal.tenant}:rpm:{window}", 1)
            if n is not None and n > spec.rpm:
                raise RateLimited(
                    f"tenant over {spec.rpm} requests per minute", retry_after=retry_after
                )
        if spec.tpm is not None:
            n = await self._bump(
                f"{self.prefix}:rl:{principal.tenant}:tpm:{window}", _requested_tokens(body)
            )
            if n is not None and n > spec.tpm:
                raise RateLimited(
                    f"tenant over {spec.tpm} tokens per minute", retry_after=retry_after
                )


def _requested_tokens(body: JSON) -> int:
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
    mt = body.get("max_tokens") or body.get("max_completion_tokens") or 256
    return chars // 4 + (mt if isinstance(mt, int) else 256)
