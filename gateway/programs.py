"""Programs inferred from plain traffic, kept in Redis so every replica sees them.

``Programs.place`` runs when a plain request arrives. The pure inference
(``analysis.programs``) says which keys to probe; then, in this order:

* this replica's ``ReplicaCache`` decides when the request's strongest probe is
  a key its own answers wrote (the previous step of the loop or chat was
  answered here): no round trip;
* a request nothing could link (no probe) starts a program here: no round trip;
* otherwise one Lua script (``LINK``) finds the program or starts one.

The request's context then carries the program's start (``app_started``:
older programs first) or, with ``program_order: las``, the program as its
application and the service it received so far (least attained service first),
and the engine that ran its previous step (``affinity``). When the
answer is known, ``Programs.finish`` updates the cache and queues the keys the
answer makes linkable with the step's usage; queued writes leave as one
pipeline per event-loop turn (``DONE`` per step), off the request's path, and a
``LINK`` probing a key still queued here waits for it. Keys that turn ambiguous
(two programs answered an identical transcript) are PUBLISHed by ``DONE``;
every replica listens and drops them from its cache (on subscribing again after a
lost connection it drops every cached key), so a replica's cache never links what the store would
call ambiguous for longer than that message takes.

Key layout, one hash tag per tenant (Redis Cluster keeps a tenant's programs in
one slot, so each script touches one slot; the record keys a script reads
after a lookup are built from the tenant's prefix and share its tag)::

    <prefix>:prog:{<tenant>}:k:<kind>:<hex>   string  program id, '*' when ambiguous
    <prefix>:prog:{<tenant>}:p:<program>      hash    started, last_seen, steps, tokens, engine, link:<kind>
    <prefix>:prog:{<tenant>}:s:<program>      list    the latest steps (JSON), capped

Every key expires ``program_ttl_s`` after its last write. A Redis failure never
fails a request: what the cache can place is placed, the rest is scheduled as it
would be without inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from analysis.programs import Link, ProgramRecord, Query, ReplicaCache, answer_keys, identify
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
# ARGV: program, now, ttl, prompt, cached, completion, engine, step JSON, max steps kept,
# link reason ('' when LINK counted the step already), user key ('' = none), channel, tenant,
# the answer keys' prefix. Keys that turned ambiguous are PUBLISHed on the channel (every
# replica drops them from its cache) and answered: their positions among the answer keys.
DONE = """
local pid, ttl = ARGV[1], tonumber(ARGV[3])
local ambiguous = {}
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v or v == pid then
    redis.call('SET', KEYS[i], pid, 'EX', ttl)
  else
    redis.call('SET', KEYS[i], '*', 'EX', ttl)
    ambiguous[#ambiguous + 1] = i - 2
  end
end
local rk = KEYS[1]
if redis.call('HSETNX', rk, 'started', ARGV[2]) == 1 then redis.call('HSET', rk, 'steps', 0) end
if ARGV[10] ~= '' then
  redis.call('HINCRBY', rk, 'steps', 1)
  redis.call('HINCRBY', rk, 'link:' .. ARGV[10], 1)
end
if ARGV[11] ~= '' then redis.call('SET', ARGV[11], pid, 'EX', ttl) end
if #ambiguous > 0 then
  local short, cut = {}, #ARGV[14] + 1
  for j, i in ipairs(ambiguous) do short[j] = string.sub(KEYS[i + 2], cut) end
  redis.call('PUBLISH', ARGV[12], cjson.encode({t = ARGV[13], k = short}))
end
redis.call('HINCRBY', rk, 'prompt_tokens', ARGV[4])
redis.call('HINCRBY', rk, 'cached_tokens', ARGV[5])
redis.call('HINCRBY', rk, 'completion_tokens', ARGV[6])
redis.call('HSET', rk, 'last_seen', ARGV[2], 'context_tokens', tonumber(ARGV[4]) + tonumber(ARGV[6]))
if ARGV[7] ~= '' then redis.call('HSET', rk, 'last_engine', ARGV[7]) end
redis.call('EXPIRE', rk, ttl)
redis.call('RPUSH', KEYS[2], ARGV[8])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
redis.call('EXPIRE', KEYS[2], ttl)
return ambiguous
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
    tenant: str
    ns: str
    program: str
    keys: tuple[str, ...]  # full Redis keys
    short: tuple[str, ...]  # the same, as analysis.programs names them
    args: list[Any]


class ProgramStore:
    """The Redis side: ``link`` (one script call) and ``done`` (queued, pipelined)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "parrot", ttl_s: int = 900,
                 max_steps: int = 256, cache: ReplicaCache | None = None,
                 flush_delay_s: float = 0.005) -> None:
        self.redis = redis
        self.flush_delay_s = flush_delay_s  # writes wait this long to share a pipeline
        self.channel = f"{prefix}:prog:ambiguous"  # keys that turned ambiguous, for every replica
        self._listener: asyncio.Task[None] | None = None
        self.cache = cache
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.max_steps = max_steps
        self._sha: dict[str, str] = {}
        self._queue: list[_Write] = []
        self._pending: Counter[str] = Counter()  # full keys written by queued or in-flight writes
        self._flushing: asyncio.Task[None] | None = None
        self._kick_scheduled = False
        self.write_errors = 0
        self.on_error: Callable[[], None] | None = None  # a failed write (metrics)

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

    def done(self, tenant: str, program: str, keys: Sequence[str], usage: Usage | None,
             engine: str | None, step: Mapping[str, Any], now: float,
             count: tuple[str, str | None] | None = None) -> None:
        """Queue the step's result; it is written with the next pipeline. ``count`` =
        (reason, user key) counts the step too (it was placed from the replica's cache)."""
        ns = self.ns(tenant)
        short = tuple(keys)
        full = tuple(ns + "k:" + k for k in short)
        u = usage or Usage(0, 0, 0)
        reason, user_key = count or ("", None)
        args = [program, repr(now), self.ttl_s, u.prompt_tokens, u.cached_tokens or 0,
                u.completion_tokens, engine or "", json.dumps(step, separators=(",", ":")),
                self.max_steps, reason, ns + "k:" + user_key if user_key else "", self.channel,
                tenant, ns + "k:"]
        self._queue.append(_Write(tenant, ns, program, full, short, args))
        self._pending.update(full)
        if not self._kick_scheduled:
            self._kick_scheduled = True
            loop = asyncio.get_running_loop()
            if self.flush_delay_s > 0:
                loop.call_later(self.flush_delay_s, self._kick)
            else:
                loop.call_soon(self._kick)

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
                    if self.on_error is not None:
                        self.on_error()
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
                answers = await pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                self._sha["done"] = await self.redis.script_load(DONE)
                continue
            if self.cache is not None:
                now = time.time()
                for w, positions in zip(batch, answers):
                    if positions:
                        self.cache.ambiguous(w.tenant, [w.short[int(i) - 1] for i in positions], now)
            return

    async def flush(self) -> None:
        """Wait until every queued write has landed (or failed)."""
        while self._queue or self._flushing is not None:
            if self._flushing is None:
                self._kick()
            task = self._flushing
            if task is not None:
                await asyncio.shield(task)

    # -- every replica hears which keys turned ambiguous ----------------------------------
    def start(self) -> None:
        if self._listener is None and self.cache is not None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        await self.flush()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        """Subscribe to the ambiguity channel. Messages may be missed while the subscription
        is down, so on subscribing again after a loss the cache forgets every key (as the
        session notifier wakes every waiter); while Redis is unreachable nobody can publish
        through it, so the cache keeps serving meanwhile."""
        backoff = 0.1
        lost = False
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if lost and self.cache is not None:
                    self.cache.forget_keys()
                lost, backoff = False, 0.1
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is not None and self.cache is not None:
                        self._heard(msg.get("data"))
            except (RedisError, OSError) as exc:
                if not lost:
                    log.warning("program ambiguity channel lost (%s)", type(exc).__name__)
                lost = True
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _heard(self, data: Any) -> None:
        try:
            msg = json.loads(data)
            tenant, keys = str(msg["t"]), [str(k) for k in msg["k"]]
        except (ValueError, KeyError, TypeError):
            return
        assert self.cache is not None
        self.cache.ambiguous(tenant, keys, time.time())

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
    local: bool = False  # placed from this replica's cache: the step is counted with its answer


class Programs:
    """Program inference for the plain request path (and any route that has messages)."""

    def __init__(self, store: ProgramStore, metrics: Metrics, *, enabled: bool = True,
                 link_user: bool = True) -> None:
        self.store = store
        if store.cache is None:
            store.cache = ReplicaCache(ttl_s=store.ttl_s)
        self.cache: ReplicaCache = store.cache
        store.on_error = metrics.program_store_errors.labels("done").inc
        self.metrics = metrics
        self.enabled = enabled
        self.link_user = link_user

    async def place(self, tenant: str, messages: Sequence[Any] | None, *, request_id: str,
                    user: str | None = None, hint: str | None = None) -> Placement | None:
        """Find or start the request's program; None when inference is off or cannot place it.

        No round trip when this replica's cache decides (the previous step was answered
        here) or when nothing could link the request (no probe: a new program); else one
        ``LINK`` script call."""
        if not self.enabled:
            return None
        q = identify(messages, user=user if self.link_user else None, hint=hint)
        if not q.probes and q.hint is None and q.tail is None:
            self.metrics.program_requests.labels("unplaced").inc()
            return None
        now = time.time()
        link = self.cache.decide(tenant, q, now)
        local = link is not None
        if link is None and not q.probes and q.hint is None:
            pid = "prog_" + secrets.token_hex(8)
            link = Link(pid, "new", ProgramRecord(pid, now, now, steps=1, links={"new": 1}))
            self.cache.remember(tenant, link.record, now)
            local = True
        if link is None:
            try:
                link = await self.store.link(tenant, q, "prog_" + secrets.token_hex(8), now)
            except (RedisError, OSError) as exc:
                log.warning("program inference skipped (%s: %s)", type(exc).__name__, exc)
                self.metrics.program_store_errors.labels("link").inc()
                self.metrics.program_requests.labels("unplaced").inc()
                return None
            self.cache.remember(tenant, link.record, now)
        self.metrics.program_requests.labels("new" if link.reason == "new" else "linked").inc()
        self.metrics.program_links.labels(link.reason).inc()
        return Placement(tenant, link.program, link.reason, link.record, q, request_id, now, local)

    def finish(self, placement: Placement | None, answers: Iterable[Mapping[str, Any]],
               usage: Usage | None, engine: str | None) -> None:
        """Record the answered step (in the cache now, in Redis with the next pipeline)."""
        if placement is None:
            return
        keys = answer_keys(placement.query, answers)
        now = time.time()
        u = usage or Usage(0, 0, 0)
        self.cache.answered(placement.tenant, placement.program, keys, u.prompt_tokens,
                            u.cached_tokens, u.completion_tokens, engine, now)
        step = {"request_id": placement.request_id, "link": placement.reason, "engine": engine,
                "arrived": round(placement.arrived, 6), "finished": round(now, 6),
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "cached_tokens": usage.cached_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None}
        count = (placement.reason, placement.query.user_key) if placement.local else None
        self.store.done(placement.tenant, placement.program, keys, usage, engine, step, now, count)


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
