"""Replica membership: which gateway replicas are alive, shared through Redis.

Each replica holds a lease: a member of one sorted set, ``<prefix>:replicas``,
whose score is the lease's expiry in milliseconds of *Redis's* clock (the
heartbeat script reads ``TIME``, so replicas' clocks may disagree). A replica
renews it every ``heartbeat_s``; one that misses ``ttl_s`` of renewals is dead
(a SIGKILL, an OOM kill, a partition) and drops out of everyone's live set on
their next heartbeat. Dead members stay in the set until someone has adopted
their work (gateway/work.py) and calls `forget`.

    membership = Membership(redis, heartbeat_s=0.5, ttl_s=3.0)
    membership.on_change.append(lambda live: dispatcher.set_share(1 / len(live)))
    membership.on_dead.append(work.adopt)      # async, called with the dead replica's id
    await membership.start()
    ...
    await membership.stop()                    # leave at once (a clean shutdown)

A replica that others may forward requests to (gateway/forwarding.py) publishes its
URL in a hash, ``<prefix>:replica_urls``, on each heartbeat, and reads everyone's:
``targets`` are the live replicas with a URL. A draining replica ``withdraw``s its
URL first, so peers stop sending it work while it finishes what it has.

A replica adopts nothing until it has been connected for ``ttl_s`` without a
break: after a Redis outage every replica's lease looks expired for a moment,
and the others must get a chance to renew before anyone is declared dead.
One key, single-key commands and scripts only: works on Redis Cluster as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import ParrotError

from .redis_errors import ANY as REDIS_ANY
from .redis_errors import failure as redis_failure

log = logging.getLogger("parrot.replicas")

# KEYS[1] the set; ARGV: replica id, lease ms. Returns {now ms, previous expiry or '',
# member, expiry, member, expiry, ...}.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local out = {tostring(now), prev or ''}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all do out[#out + 1] = all[i] end
return out
"""

# KEYS[1] the set; ARGV: replica id. Removes it only if its lease has expired (a
# replica that came back keeps its place). Returns 1 when removed.
_FORGET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

ChangeListener = Callable[[list[str]], None]
DeadListener = Callable[[str], Awaitable[None]]


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def new_replica_id() -> str:
    return "gw-" + uuid.uuid4().hex[:12]


class Membership:
    """This replica's lease and the live set of every replica (see the module docstring)."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "parrot",
        replica_id: str | None = None,
        heartbeat_s: float = 0.5,
        ttl_s: float = 3.0,
        url: str | None = None,
    ) -> None:
        if ttl_s <= heartbeat_s:
            raise ValueError("ttl_s must exceed heartbeat_s")
        self._redis = redis
        self.key = f"{prefix}:replicas"
        self.id = replica_id or new_replica_id()
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.url = url  # where peers reach this replica; None: it takes no forwarded work
        self.urls_key = f"{prefix}:replica_urls"
        self.urls: dict[str, str] = {}  # replica -> URL, as last read
        self.live: list[str] = [self.id]  # sorted; this replica counts itself until told
        self.dead: list[str] = []  # leases expired, work not yet adopted
        self.on_change: list[ChangeListener] = []
        self.on_dead: list[DeadListener] = []
        self.on_expired: list[Callable[[], Awaitable[None]]] = []  # our own lease had lapsed
        self._connected_since: float | None = None
        self._beats = 0
        self._task: asyncio.Task[None] | None = None
        self._adopting: dict[str, asyncio.Task[None]] = {}

    @property
    def share(self) -> float:
        """This replica's fair share of shared capacity: 1 / live replicas."""
        return 1.0 / max(1, len(self.live))

    @property
    def targets(self) -> list[str]:
        """Live replicas that take forwarded requests (sorted; may be empty)."""
        return [r for r in self.live if r in self.urls]

    async def withdraw(self) -> None:
        """Take no more forwarded work (draining): peers drop us from ``targets`` on their
        next heartbeat."""
        self.url = None
        self.urls.pop(self.id, None)
        with contextlib.suppress(*REDIS_ANY):
            await self._redis.hdel(self.urls_key, self.id)

    async def start(self) -> None:
        """Register (one heartbeat, errors logged) and keep renewing in the background."""
        await self.beat()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="parrot-membership")

    async def stop(self, *, leave: bool = True, forget: bool = False) -> None:
        """Stop renewing; ``leave`` gives the lease up at once (peers adopt what is left
        and rebalance on their next heartbeat) instead of letting it expire; ``forget``
        removes this replica outright (nothing is left to adopt)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # the loop also ends at its next turn, should a Redis call eat this
            await asyncio.wait((task,), timeout=self.ttl_s)
        for t in list(self._adopting.values()):
            t.cancel()
        await asyncio.gather(*self._adopting.values(), return_exceptions=True)
        if leave:
            with contextlib.suppress(*REDIS_ANY):
                await self._redis.hdel(self.urls_key, self.id)
                if forget:
                    await self._redis.zrem(self.key, self.id)
                else:
                    await self._redis.zadd(self.key, {self.id: 0})  # expired: adopt at once

    async def forget(self, replica: str) -> bool:
        """Drop a dead replica whose work has been adopted (no-op if it came back)."""
        gone = bool(await self._redis.eval(_FORGET, 1, self.key, replica))
        if gone:
            await self._redis.hdel(self.urls_key, replica)
        return gone

    async def _loop(self) -> None:
        while self._task is not None:
            await asyncio.sleep(self.heartbeat_s)
            if self._task is not None:
                await self.beat()

    async def beat(self) -> None:
        """Renew the lease, refresh the live set, notify listeners, start adoptions."""
        try:
            answer = await self._redis.eval(_BEAT, 1, self.key, self.id, int(self.ttl_s * 1000))
        except Exception as exc:  # Redis trouble, or redis-py tripping over it: keep beating
            if self._connected_since is not None:
                log.warning("replica %s: heartbeat failed (%r)", self.id, exc)
            self._connected_since = None
            return
        await self._publish()
        mono = time.monotonic()
        now = float(_s(answer[0]))
        prev = _s(answer[1])
        members = [(_s(answer[i]), float(_s(answer[i + 1]))) for i in range(2, len(answer), 2)]
        if self._connected_since is None:
            self._connected_since = mono
        lapsed = self._beats > 0 and (prev == "" or float(prev) <= now)
        self._beats += 1
        if lapsed:
            log.error("replica %s: our lease had lapsed; peers may have adopted our work", self.id)
            for fn in self.on_expired:
                asyncio.create_task(fn())
        live = sorted(m for m, exp in members if exp > now)
        self.dead = sorted(m for m, exp in members if exp <= now and m != self.id)
        if live != self.live:
            log.info("replica %s: %d live replica(s): %s", self.id, len(live), " ".join(live))
            self.live = live
            for fn in self.on_change:
                try:
                    fn(live)
                except Exception:  # a listener's bug must not stop the heartbeat
                    log.exception("membership listener failed")
        if mono - self._connected_since >= self.ttl_s:
            for dead in self.dead:
                if dead not in self._adopting:
                    self._adopting[dead] = asyncio.create_task(
                        self._adopt(dead), name=f"parrot-adopt:{dead}")

    async def _publish(self) -> None:
        """Write our URL (again: Redis may have restarted empty) and read everyone's."""
        try:
            if self.url is not None:
                await self._redis.hset(self.urls_key, self.id, self.url)
            else:  # withdrawn (a beat under way then may have written it back)
                await self._redis.hdel(self.urls_key, self.id)
            urls = await self._redis.hgetall(self.urls_key)
        except Exception as exc:  # keep the URLs we had; the next beat tries again
            log.debug("replica %s: reading peers' URLs failed (%r)", self.id, exc)
            return
        self.urls = {_s(k): _s(v) for k, v in urls.items()}

    async def _adopt(self, dead: str) -> None:
        try:
            for fn in self.on_dead:
                await fn(dead)
        except Exception as exc:
            if redis_failure(exc) or isinstance(exc, ParrotError):
                log.warning("adopting the work of %s failed (%r); will retry", dead, exc)
            else:
                log.exception("adopting the work of %s failed", dead)
        finally:
            self._adopting.pop(dead, None)


__all__ = ["Membership", "new_replica_id"]
