"""A tenant's recent sessions, for the session list of the UI (``GET /ui``).

One sorted set per tenant (member = session id, score = last activity, epoch
seconds), so every key of the index lives in one Redis Cluster slot::

    <prefix>:tenant:{<tenant>}:recent    zset  session id -> last activity

Each touch trims the set to the session TTL and to ``keep`` entries and
refreshes its own TTL, so it never outgrows what it indexes. Touches are
throttled per process (a session seen ``touch_every_s`` ago is not written
again) and best effort: the index only feeds a listing, so a Redis hiccup is
logged and never fails the request that touched it. Sessions deleted or
expired since are filtered out (and dropped) when the list is read. A session
new to the index (``ZADD`` added it, on whichever replica) calls ``on_new``:
the gateway counts it in ``parrot_sessions_total``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.errors import ServiceUnavailable
from common.types import JSON

if TYPE_CHECKING:
    from .store import SessionStore

log = logging.getLogger("parrot.session_index")

MAX_THROTTLED = 10_000  # (tenant, session) pairs remembered for throttling


class SessionIndex:
    def __init__(
        self,
        redis: aioredis.Redis,
        store: SessionStore,
        *,
        ttl_s: float,
        keep: int = 200,
        touch_every_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_new: Callable[[], object] | None = None,
    ) -> None:
        self._redis = redis
        self._store = store
        self.ttl_s = ttl_s
        self.keep = keep
        self.touch_every_s = touch_every_s
        self._clock = clock
        self._on_new = on_new  # called once per session new to the index (ZADD added it)
        self._touched: OrderedDict[tuple[str, str], float] = OrderedDict()

    def key(self, tenant: str) -> str:
        return f"{self._store.prefix}:tenant:{{{quote(tenant, safe='')}}}:recent"

    async def touch(self, tenant: str, session: str) -> None:
        """Mark ``session`` active now (best effort, throttled)."""
        now = self._clock()
        last = self._touched.get((tenant, session))
        if last is not None and now - last < self.touch_every_s:
            return
        self._touched[(tenant, session)] = now
        self._touched.move_to_end((tenant, session))
        while len(self._touched) > MAX_THROTTLED:
            self._touched.popitem(last=False)
        key = self.key(tenant)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {session: now})
                pipe.zremrangebyscore(key, "-inf", now - self.ttl_s)
                pipe.zremrangebyrank(key, 0, -self.keep - 1)
                pipe.expire(key, int(self.ttl_s) + 1)
                added, *_ = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._touched.pop((tenant, session), None)
            log.warning("could not index session activity (%s)", type(exc).__name__)
            return
        if added and self._on_new is not None:
            self._on_new()

    async def forget(self, tenant: str, session: str) -> None:
        self._touched.pop((tenant, session), None)
        try:
            await self._redis.zrem(self.key(tenant), session)
        except (RedisError, OSError) as exc:
            log.warning("could not drop a session from the index (%s)", type(exc).__name__)

    async def recent(self, tenant: str, limit: int = 50) -> list[JSON]:
        """The tenant's most recently active live sessions, newest first, with their
        size and times: ``[{session, last_active, created, deadline, requests, variables}]``."""
        key = self.key(tenant)
        try:
            entries: list[tuple[Any, float]] = await self._redis.zrevrange(
                key, 0, max(0, limit - 1), withscores=True
            )
            sids = [s.decode() if isinstance(s, bytes) else str(s) for s, _ in entries]
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    keys = self._store.keys(tenant, sid)
                    pipe.hgetall(keys.meta)
                    pipe.hlen(keys.reqs)
                    pipe.hlen(keys.vars)
                raw = await pipe.execute() if sids else []
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("state store unavailable") from exc
        out: list[JSON] = []
        gone: list[str] = []
        for i, (sid, (_, score)) in enumerate(zip(sids, entries)):
            meta, n_reqs, n_vars = raw[3 * i: 3 * i + 3]
            if not meta:
                gone.append(sid)
                continue
            m = {_s(k): _s(v) for k, v in meta.items()}
            created = float(m.get("created", score))
            out.append({
                "session": sid,
                "last_active": max(float(score), created),  # touched just before creation
                "created": created,
                "deadline": float(m["deadline"]) if "deadline" in m else None,
                "requests": int(n_reqs),
                "variables": int(n_vars),
            })
        if gone:
            try:
                await self._redis.zrem(key, *gone)
            except (RedisError, OSError):
                pass  # dropped next time
        return out


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x
