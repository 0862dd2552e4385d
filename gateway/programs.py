"""Programs inferred from plain traffic, kept in Redis so every replica sees them.

``Programs.place`` runs when a plain request arrives: the pure inference
(``analysis.programs``) says which keys to probe, one Lua script (``LINK``)
finds the program (or starts one) and counts the step, and the request's
context gets the program as its application (``ctx.session``), its start
(``app_started``: application age) and the service it received so far
(``attained``: least attained service first, inside the tenant). When the
answer is known, ``Programs.finish`` queues the keys it makes linkable and the
step's usage; queued writes leave as one pipeline per event-loop turn
(``DONE`` per step), off the request's path. A request probing a key this
replica has not written yet waits for that write first (read your writes), so
the client's next step always finds its predecessor here; another replica sees
it once the pipeline landed (well under a client round trip).

Key layout, one hash tag per tenant (Redis Cluster keeps a tenant's programs in
one slot, so each script touches one slot; the record keys a script reads
after a lookup are built from the tenant's prefix and share its tag)::

    <prefix>:prog:{<tenant>}:k:<kind>:<hex>   string  program id, '*' when ambiguous
    <prefix>:prog:{<tenant>}:p:<program>      hash    started, last_seen, steps, tokens, engine, link:<kind>
    <prefix>:prog:{<tenant>}:s:<program>      list    the latest steps (JSON), capped

Every key expires ``program_ttl_s`` after its last write. A Redis failure never
fails a request: it is scheduled as it would be without inference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from analysis.programs import Link, ProgramRecord, Query, answer_keys, identify
from backends.base import Usage

from .metrics import Metrics

log = logging.getLogger("parrot.programs")

# KEYS: probe keys (in order), then the user key when ARGV[7] == '1'.
# ARGV: namespace, now, ttl, new id, hint ('' = none), number of probes, has user, probe kinds...
# Answer: {program, reason, record as a flat HGETALL list}.
LINK = """
local ns, now, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
local pid, reason = nil, 'new'
if ARGV[5] ~= '' then
  pid, reason = ARGV[5], 'hint'
else
  for i = 1, n do
    local v = redis.call('GET', KEYS[i])
    if v and v ~= '*' then pid, reason = v, ARGV[7 + i]; break end
  end
end
if not pid then pid = ARGV[4] end
local rk = ns .. 'p:' .. pid
if redis.call('HSETNX', rk, 'started', now) == 1 then redis.call('HSET', rk, 'steps', 0) end
redis.call('HINCRBY', rk, 'steps', 1)
redis.call('HINCRBY', rk, 'link:' .. reason, 1)
redis.call('HSET', rk, 'last_seen', now)
redis.call('EXPIRE', rk, ttl)
if ARGV[7] == '1' then redis.call('SET', KEYS[n + 1], pid, 'EX', ttl) end
return {pid, reason, redis.call('HGETALL', rk)}
"""

# KEYS: record, steps list, answer keys...
# ARGV: program, now, ttl, prompt, cached, completion, engine, step JSON, max steps kept.
DONE = """
local pid, ttl = ARGV[1], tonumber(ARGV[3])
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v or v == pid then
    redis.call('SET', KEYS[i], pid, 'EX', ttl)
  else
    redis.call('SET', KEYS[i], '*', 'EX', ttl)
  end
end
local rk = KEYS[1]
if redis.call('HSETNX', rk, 'started', ARGV[2]) == 1 then redis.call('HSET', rk, 'steps', 0) end
redis.call('HINCRBY', rk, 'prompt_tokens', ARGV[4])
redis.call('HINCRBY', rk, 'cached_tokens', ARGV[5])
redis.call('HINCRBY', rk, 'completion_tokens', ARGV[6])
redis.call('HSET', rk, 'last_seen', ARGV[2], 'context_tokens', tonumber(ARGV[4]) + tonumber(ARGV[6]))
if ARGV[7] ~= '' then redis.call('HSET', rk, 'last_engine', ARGV[7]) end
redis.call('EXPIRE', rk, ttl)
redis.call('RPUSH', KEYS[2], ARGV[8])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
redis.call('EXPIRE', KEYS[2], ttl)
return 1
"""


def record_of(pid: str, flat: Mapping[str, str]) -> ProgramRecord:
    """A program record from its Redis hash (string fields)."""

    def num(name: str) -> float:
        try:
            return float(flat.get(name) or 0)
        except ValueError:
            return 0.0

    links = {k[5:]: int(num(k)) for k in flat if k.startswith("link:")}
    return ProgramRecord(
        id=pid, started=num("started"), last_seen=num("last_seen"), steps=int(num("steps")),
        prompt_tokens=int(num("prompt_tokens")), cached_tokens=int(num("cached_tokens")),
        completion_tokens=int(num("completion_tokens")), last_engine=flat.get("last_engine") or None,
        context_tokens=int(num("context_tokens")), links=links,
    )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class _Write:
    ns: str
    program: str
    keys: tuple[str, ...]
    args: list[Any]


class ProgramStore:
    """The Redis side: ``link`` (one script call) and ``done`` (queued, pipelined)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "parrot", ttl_s: int = 900,
                 max_steps: int = 256) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_steps = max_steps
        self._sha: dict[str, str] = {}
        self._queue: list[_Write] = []
        self._pending: Counter[str] = Counter()  # full keys written by queued or in-flight writes
        self._flushing: asyncio.Task[None] | None = None
        self._kick_scheduled = False
        self.write_errors = 0

    def ns(self, tenant: str) -> str:
        return f"{self.prefix}:prog:{{{quote(tenant, safe='')}}}:"

    async def _eval(self, client: Any, name: str, script: str, keys: Sequence[str],
                    args: Sequence[Any]) -> Any:
        sha = self._sha.get(name)
        if sha is None:
            sha = self._sha[name] = await self.redis.script_load(script)
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or flushed its scripts
            self._sha[name] = await self.redis.script_load(script)
            return await client.evalsha(self._sha[name], len(keys), *keys, *args)

    async def link(self, tenant: str, query: Query, new_id: str, now: float) -> Link:
        ns = self.ns(tenant)
        keys = [ns + "k:" + p.key for p in query.probes]
        if self._pending and any(k in self._pending for k in keys):
            await self.flush()
        if query.user_key:
            keys.append(ns + "k:" + query.user_key)
        args = [ns, repr(now), self.ttl_s, new_id, query.hint or "", len(query.probes),
                "1" if query.user_key else "0", *(p.kind for p in query.probes)]
        pid, reason, flat = await self._eval(self.redis, "link", LINK, keys, args)
        pid = _text(pid)
        it = iter(_text(x) for x in flat)
        return Link(pid, _text(reason), record_of(pid, dict(zip(it, it))))

    def done(self, tenant: str, program: str, keys: Iterable[str], usage: Usage | None,
             engine: str | None, step: Mapping[str, Any], now: float) -> None:
        """Queue the step's result; it is written with the next pipeline."""
        ns = self.ns(tenant)
        full = tuple(ns + "k:" + k for k in keys)
        u = usage or Usage(0, 0, 0)
        args = [program, repr(now), self.ttl_s, u.prompt_tokens, u.cached_tokens or 0,
                u.completion_tokens, engine or "", json.dumps(step, separators=(",", ":")),
                self.max_steps]
        self._queue.append(_Write(ns, program, full, args))
        self._pending.update(full)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._flushing is None and self._queue:
            self._flushing = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._write(batch)
                except (RedisError, OSError) as exc:
                    self.write_errors += 1
                    log.warning("program state not saved (%s: %s)", type(exc).__name__, exc)
                finally:
                    for w in batch:
                        self._pending.subtract(w.keys)
                    self._pending = +self._pending
        finally:
            self._flushing = None

    async def _write(self, batch: list[_Write]) -> None:
        if "done" not in self._sha:
            self._sha["done"] = await self.redis.script_load(DONE)
        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for w in batch:
                keys = [w.ns + "p:" + w.program, w.ns + "s:" + w.program, *w.keys]
                pipe.evalsha(self._sha["done"], len(keys), *keys, *w.args)
            try:
                await pipe.execute()
                return
            except NoScriptError:
                if attempt:
                    raise
                self._sha["done"] = await self.redis.script_load(DONE)

    async def flush(self) -> None:
        """Wait until every queued write has landed (or failed)."""
        while self._queue or self._flushing is not None:
            if self._flushing is None:
                self._kick()
            task = self._flushing
            if task is not None:
                await asyncio.shield(task)

    async def get(self, tenant: str, program: str) -> tuple[ProgramRecord, list[Any]] | None:
        ns = self.ns(tenant)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(ns + "p:" + program)
        pipe.lrange(ns + "s:" + program, 0, -1)
        flat, steps = await pipe.execute()
        if not flat:
            return None
        rec = record_of(program, {_text(k): _text(v) for k, v in flat.items()})
        return rec, [json.loads(s) for s in steps]


@dataclass
class Placement:
    """A plain request's program, and what its answer needs to be recorded."""

    tenant: str
    program: str
    reason: str
    record: ProgramRecord
    query: Query
    request_id: str
    arrived: float = field(default_factory=time.time)


class Programs:
    """Program inference for the plain request path (and any route that has messages)."""

    def __init__(self, store: ProgramStore, metrics: Metrics, *, enabled: bool = True,
                 link_user: bool = True) -> None:
        self.store = store
        self.metrics = metrics
        self.enabled = enabled
        self.link_user = link_user

    async def place(self, tenant: str, messages: Sequence[Any] | None, *, request_id: str,
                    user: str | None = None, hint: str | None = None) -> Placement | None:
        """Find or start the request's program; None when inference is off or cannot place it."""
        if not self.enabled:
            return None
        q = identify(messages, user=user if self.link_user else None, hint=hint)
        if not q.probes and q.hint is None and q.tail is None:
            self.metrics.program_requests.labels("unplaced").inc()
            return None
        now = time.time()
        try:
            link = await self.store.link(tenant, q, "prog_" + secrets.token_hex(8), now)
        except (RedisError, OSError) as exc:
            log.warning("program inference skipped (%s: %s)", type(exc).__name__, exc)
            self.metrics.program_requests.labels("unplaced").inc()
            return None
        self.metrics.program_requests.labels("new" if link.reason == "new" else "linked").inc()
        self.metrics.program_links.labels(link.reason).inc()
        return Placement(tenant, link.program, link.reason, link.record, q, request_id, now)

    def finish(self, placement: Placement | None, answers: Iterable[Mapping[str, Any]],
               usage: Usage | None, engine: str | None) -> None:
        """Record the answered step (queued write); no-op without a placement."""
        if placement is None:
            return
        keys = answer_keys(placement.query, answers)
        now = time.time()
        step = {"request_id": placement.request_id, "link": placement.reason, "engine": engine,
                "arrived": round(placement.arrived, 6), "finished": round(now, 6),
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "cached_tokens": usage.cached_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None}
        self.store.done(placement.tenant, placement.program, keys, usage, engine, step, now)


def scheduling_key(tenant: str, program: str) -> str:
    """The application key the policy sees (programs of different tenants never collide)."""
    return f"program:{tenant}:{program}"


def program_view(rec: ProgramRecord, steps: list[Any]) -> dict[str, Any]:
    """The ``GET /v1/programs/{id}`` body."""
    return {
        "id": rec.id, "object": "program", "created": int(rec.started), "started_at": rec.started,
        "last_seen_at": rec.last_seen, "steps": rec.steps, "attained_tokens": rec.attained,
        "usage": {"prompt_tokens": rec.prompt_tokens, "cached_tokens": rec.cached_tokens,
                  "completion_tokens": rec.completion_tokens},
        "last_engine": rec.last_engine, "links": rec.links, "recent_steps": steps,
    }
