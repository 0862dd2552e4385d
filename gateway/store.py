"""Session state in Redis: semantic variables, request records, session meta.

Key layout; all keys of one session share the hash tag ``{<tenant>:<session>}``
so Redis Cluster keeps them in one slot and one MULTI may touch them all::

    <prefix>:{<tenant>:<session>}:meta    hash  created, deadline, version
    <prefix>:{<tenant>:<session>}:vars    hash  variable name -> JSON
    <prefix>:{<tenant>:<session>}:reqs    hash  request id -> JSON
    <prefix>:{<tenant>:<session>}:events  pub/sub channel (gateway/notifier.py)

<tenant> is percent-encoded (no ``:``, ``{`` or ``}`` left) and session ids
cannot hold those characters either, so two (tenant, session) pairs never
share a key.

Every write goes through `SessionStore._transact`: WATCH meta, read, decide
with the pure ``plan_*`` functions below, then one MULTI with the writes, a
version bump, a TTL refresh of every key and the PUBLISH of the events. Since
every write bumps ``meta.version`` (and DEL removes meta), watching meta alone
catches any concurrent change. A per-session asyncio lock serialises the
writers of one process, so WATCH retries only happen between replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable
from common.ids import is_session_id
from common.types import JSON, VarStatus
from gateway.notifier import Event, EventKind, Notifier, channel_name

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

T = TypeVar("T")

SESSION_DELETED = "session deleted"
_MAX_ATTEMPTS = 50  # WATCH retries before calling it contention


# --------------------------------------------------------------------------- data


@dataclass
class Variable:
    """One semantic variable of a session; written once (ready or failed)."""

    name: str
    status: VarStatus = "pending"
    value: str | None = None
    error: str | None = None
    producer: str | None = None  # id of the request whose output this is
    consumers: list[str] = field(default_factory=list)  # ids of requests reading it
    updated_at: float | None = None

    def to_public(self) -> JSON:
        return {"name": self.name, "status": self.status, "value": self.value, "error": self.error}

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        del d["name"]  # the hash field
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, name: str, data: bytes | str) -> Variable:
        d = orjson.loads(data)
        return cls(
            name=name,
            status=d["status"],
            value=d.get("value"),
            error=d.get("error"),
            producer=d.get("producer"),
            consumers=list(d.get("consumers") or []),
            updated_at=d.get("updated_at"),
        )


@dataclass
class RequestRecord:
    """What the session graph shows about one request."""

    id: str
    tenant: str
    session: str
    inputs: list[str]
    output: str | None
    criteria: str = "latency"
    status: str = "waiting"  # waiting|queued|running|done|failed|cancelled
    engine: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    created_at: float = 0.0
    ready_at: float | None = None  # all inputs ready
    started_at: float | None = None  # sent to an engine
    first_token_at: float | None = None  # first generated token (streamed engine calls)
    finished_at: float | None = None
    error: str | None = None
    replica: str | None = None  # gateway replica that owns it
    max_tokens: int | None = None
    criteria_effective: str | None = None  # after objective deduction
    group: str | None = None  # task group (map stage) id
    prefix_hashes: list[int] = field(default_factory=list)  # block hashes of the prompt

    @property
    def queued_ms(self) -> float | None:
        if self.started_at is None:
            return None
        since = self.ready_at if self.ready_at is not None else self.created_at
        return round(max(0.0, self.started_at - since) * 1000, 3)

    @property
    def run_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(max(0.0, self.finished_at - self.started_at) * 1000, 3)

    def to_public(self) -> JSON:
        return {
            "id": self.id,
            "inputs": list(self.inputs),
            "output": self.output,
            "status": self.status,
            "criteria": self.criteria,
            "engine": self.engine,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "queued_ms": self.queued_ms,
            "run_ms": self.run_ms,
            "error": self.error,
            "criteria_effective": self.criteria_effective,
            "group": self.group,
        }

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively, ~20x faster than asdict + json:
        # records are written 2-3 times per request and read back per graph view.
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> RequestRecord:
        d = orjson.loads(data)
        return cls(**{k: v for k, v in d.items() if k in _RECORD_FIELDS})


_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestRecord))
_UPDATABLE_FIELDS = _RECORD_FIELDS - {"id", "tenant", "session"}


@dataclass(frozen=True)
class SessionKeys:
    meta: str
    vars: str
    reqs: str
    channel: str

    @classmethod
    def of(cls, prefix: str, tenant: str, session: str) -> SessionKeys:
        if not is_session_id(session):
            raise BadRequest(f"invalid session id {session!r}", param="X-Parrot-Session")
        tag = f"{quote(tenant, safe='')}:{session}"
        base = f"{prefix}:{{{tag}}}"
        return cls(f"{base}:meta", f"{base}:vars", f"{base}:reqs", channel_name(prefix, tag))

    @property
    def data(self) -> tuple[str, str, str]:
        return (self.meta, self.vars, self.reqs)


# --------------------------------------------------------------- pure decisions


@dataclass
class Plan:
    """What one transaction writes; `result` is what the public method returns."""

    result: Any = None
    variables: list[Variable] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    events: list[tuple[str | None, EventKind]] = field(default_factory=list)
    deadline: float | None = None  # set on the session if it has none

    @property
    def writes(self) -> bool:
        return bool(self.variables or self.requests)


def _check_size(name: str, value: str, max_value_bytes: int) -> None:
    size = len(value.encode())
    if size > max_value_bytes:
        raise PayloadTooLarge(
            f"value of variable {name!r} is {size} bytes; the limit is {max_value_bytes}",
            param=name,
        )


def _check_count(var_count: int, new: int, max_variables: int) -> None:
    if new and var_count + new > max_variables:
        raise PayloadTooLarge(
            f"a session holds at most {max_variables} variables",
            code="too_many_variables",
        )


def _writable(name: str, var: Variable | None) -> None:
    """A variable accepts a first value only while pending."""
    if var is not None and var.status != "pending":
        raise Conflict(f"variable {name!r} is already {var.status}", param=name)


def plan_register(
    rec: RequestRecord,
    current: dict[str, Variable | None],
    var_count: int,
    max_variables: int,
    now: float,
) -> Plan:
    """Declare `rec.output` (pending, produced by rec) and its inputs (consumed by rec).

    `current` holds the stored state of the output and every input.
    """
    _check_count(var_count, sum(v is None for v in current.values()), max_variables)
    out: dict[str, Variable] = {}
    if rec.output is not None:
        var = current.get(rec.output)
        _writable(rec.output, var)
        if var is not None and var.producer is not None:
            raise Conflict(
                f"variable {rec.output!r} is already produced by request {var.producer}",
                param=rec.output,
            )
        base = var or Variable(rec.output)
        out[rec.output] = dataclasses.replace(
            base, producer=rec.id, consumers=list(base.consumers), updated_at=now
        )
    for name in dict.fromkeys(rec.inputs):
        prev = out.get(name) or current.get(name)
        var = (
            dataclasses.replace(prev, consumers=list(prev.consumers))
            if prev is not None
            else Variable(name, updated_at=now)
        )
        if rec.id not in var.consumers:
            var.consumers.append(rec.id)
        out[name] = var
    return Plan(variables=list(out.values()), requests=[rec])


def plan_put(
    name: str, value: str, current: Variable | None, var_count: int, max_variables: int, now: float
) -> Plan:
    """A user sets an input: only a pending variable without a producer."""
    _writable(name, current)
    if current is not None and current.producer is not None:
        raise Conflict(
            f"variable {name!r} is the output of request {current.producer}", param=name
        )
    _check_count(var_count, current is None, max_variables)
    var = Variable(
        name,
        "ready",
        value=value,
        consumers=list(current.consumers) if current else [],
        updated_at=now,
    )
    return Plan(result=var, variables=[var], events=[(name, "ready")])


def plan_result(
    name: str, value: str, current: Variable | None, producer: str | None, now: float
) -> Plan:
    """The producer stores its output; the variable must exist (else the session went)."""
    if current is None:
        raise NotFound(f"variable {name!r} not found", param=name)
    _writable(name, current)
    if producer is not None and current.producer != producer:
        raise Conflict(f"request {producer} does not produce variable {name!r}", param=name)
    var = dataclasses.replace(
        current, status="ready", value=value, consumers=list(current.consumers), updated_at=now
    )
    return Plan(result=var, variables=[var], events=[(name, "ready")])


def plan_fail(name: str, error: str, current: Variable | None, now: float) -> Plan:
    """Fail a pending variable; anything else is left alone (result False)."""
    if current is None or current.status != "pending":
        return Plan(result=False)
    var = dataclasses.replace(
        current, status="failed", error=error, consumers=list(current.consumers), updated_at=now
    )
    return Plan(result=True, variables=[var], events=[(name, "failed")])


def settled(states: dict[str, Variable]) -> bool:
    """A wait is over when every variable is ready or any has failed."""
    values = states.values()
    return all(v.status == "ready" for v in values) or any(v.status == "failed" for v in values)


# ----------------------------------------------------------------------- I/O


def _str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _store_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Redis connection trouble becomes ServiceUnavailable (503) at the store's surface."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable("state store unavailable") from exc

    return wrapper


class _KeyedLocks:
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


_REGISTER = """
local rid, out = ARGV[1], ARGV[3]
if redis.call('HEXISTS', KEYS[3], rid) == 1 then return {'dup'} end
local now = tonumber(ARGV[6])
local inputs = {}
for i = 1, tonumber(ARGV[8]) do inputs[i] = ARGV[8 + i] end
local fresh, vars = 0, {}
if out ~= '' then
  local raw = redis.call('HGET', KEYS[2], out)
  if raw then
    local v = cjson.decode(raw)
    if v.status ~= 'pending' then return {'status', v.status} end
    if v.producer ~= nil and v.producer ~= cjson.null then return {'producer', v.producer} end
    if #inputs > 0 and type(v.consumers) == 'table' and #v.consumers > 0 then return {'validate'} end
    v.producer = rid
    v.updated_at = now
    vars[out] = v
  else
    fresh = fresh + 1
    vars[out] = {status = 'pending', value = cjson.null, error = cjson.null, producer = rid,
                 consumers = {}, updated_at = now}
  end
end
for _, name in ipairs(inputs) do
  local v = vars[name]
  if v == nil then
    local raw = redis.call('HGET', KEYS[2], name)
    if raw then
      v = cjson.decode(raw)
      if type(v.consumers) ~= 'table' then v.consumers = {} end
    else
      fresh = fresh + 1
      v = {status = 'pending', value = cjson.null, error = cjson.null, producer = cjson.null,
           consumers = {}, updated_at = now}
    end
    vars[name] = v
  end
  local seen = false
  for _, c in ipairs(v.consumers) do if c == rid then seen = true end end
  if not seen then table.insert(v.consumers, rid) end
end
local count = redis.call('HLEN', KEYS[2])
if fresh > 0 and count + fresh > tonumber(ARGV[5]) then return {'count', count, fresh} end
redis.call('HSETNX', KEYS[1], 'created', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[1], 'deadline', ARGV[7]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
for name, v in pairs(vars) do redis.call('HSET', KEYS[2], name, cjson.encode(v)) end
redis.call('HSET', KEYS[3], rid, ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return {'ok'}
"""


_SAVE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


class SessionStore:
    """Variables and request records of sessions, shared by all gateway replicas."""

    def __init__(
        self,
        redis: Redis,
        *,
        notifier: Notifier | None = None,
        ttl_s: int = 3600,
        max_value_bytes: int = 1 << 20,
        max_variables: int = 10000,
        prefix: str = "parrot",
        recheck_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if any(c in prefix for c in "{}*?[]"):
            raise ValueError(f"prefix {prefix!r} must not contain braces or glob characters")
        self._redis = redis
        self.notifier = notifier
        self.ttl_s = ttl_s
        self.max_value_bytes = max_value_bytes
        self.max_variables = max_variables
        self.prefix = prefix
        self.recheck_s = recheck_s  # safety re-read while waiting (heals lost messages)
        self._clock = clock
        self._locks = _KeyedLocks()

    def attach_notifier(self, notifier: Notifier) -> None:
        """Give the store the notifier `wait_variables` sleeps on."""
        self.notifier = notifier

    def keys(self, tenant: str, session: str) -> SessionKeys:
        return SessionKeys.of(self.prefix, tenant, session)

    # ------------------------------------------------------------- writes

    async def _transact(
        self,
        tenant: str,
        session: str,
        decide: Callable[[Pipeline, SessionKeys], Awaitable[Plan]],
    ) -> Any:
        """Run `decide` on a consistent snapshot and apply its plan atomically."""
        keys = self.keys(tenant, session)
        async with self._locks.hold(keys.meta):
            for _ in range(_MAX_ATTEMPTS):
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(keys.meta)
                    plan = await decide(pipe, keys)
                    if not plan.writes:
                        return plan.result
                    pipe.multi()
                    self._queue(pipe, keys, tenant, session, plan)
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue
                    return plan.result
        raise ServiceUnavailable("state store contention: too many concurrent writers")

    def _queue(
        self, pipe: Pipeline, keys: SessionKeys, tenant: str, session: str, plan: Plan
    ) -> None:
        pipe.hsetnx(keys.meta, "created", self._clock())
        if plan.deadline is not None:
            pipe.hsetnx(keys.meta, "deadline", plan.deadline)
        pipe.hincrby(keys.meta, "version", 1)
        if plan.variables:
            pipe.hset(keys.vars, mapping={v.name: v.to_json() for v in plan.variables})
        if plan.requests:
            pipe.hset(keys.reqs, mapping={r.id: r.to_json() for r in plan.requests})
        for key in keys.data:
            pipe.expire(key, self.ttl_s)
        for name, kind in plan.events:
            pipe.publish(keys.channel, Event(tenant, session, kind, name).encode())

    @staticmethod
    async def _load_vars(
        pipe: Redis, keys: SessionKeys, names: Iterable[str]
    ) -> dict[str, Variable | None]:
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        raw = await pipe.hmget(keys.vars, names)
        return {n: Variable.from_json(n, r) if r is not None else None for n, r in zip(names, raw)}

    @_store_errors
    async def register_request(
        self,
        rec: RequestRecord,
        validate: Callable[[list[RequestRecord]], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        """Record a request and declare its variables, atomically.

        `validate(existing_records)` runs on the same snapshot the write is
        based on (it may run again on a retry) when a cycle is possible (the
        output already has consumers and the request has inputs), and refuses
        by raising, e.g. DependencyCycle; then nothing is written. Raises Conflict if the id is
        taken or the output already has a producer or a value, PayloadTooLarge
        (code too_many_variables) past the variable limit. Creates the session
        (with `deadline`, an absolute epoch time) if absent.
        """

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            if await pipe.hexists(keys.reqs, rec.id):
                raise Conflict(f"request {rec.id} is already registered")
            names = ([rec.output] if rec.output else []) + list(rec.inputs)
            current = await self._load_vars(pipe, keys, names)
            out = current.get(rec.output) if rec.output else None
            # A cycle needs an edge back into this request: its output already has
            # consumers and it has inputs. Only then is the whole graph read.
            if validate is not None and rec.inputs and out is not None and out.consumers:
                raw = await pipe.hgetall(keys.reqs)
                validate([RequestRecord.from_json(v) for v in raw.values()])
            var_count = int(await pipe.hlen(keys.vars))
            plan = plan_register(rec, current, var_count, self.max_variables, self._clock())
            plan.deadline = deadline
            return plan

        if not await self._register_fast(rec, deadline):
            await self._transact(rec.tenant, rec.session, decide)

    async def _register_fast(self, rec: RequestRecord, deadline: float | None) -> bool:
        """The common registration in one atomic script (one round trip, no WATCH, no
        lock): the same checks and writes as ``plan_register``. Returns False when a
        cycle is possible (the output already has consumers and the request has inputs):
        then the transaction path reads the graph and validates."""
        keys = self.keys(rec.tenant, rec.session)
        inputs = list(dict.fromkeys(rec.inputs))
        res = await self._redis.eval(
            _REGISTER, 3, keys.meta, keys.vars, keys.reqs,
            rec.id, rec.to_json(), rec.output or "", self.ttl_s, self.max_variables,
            repr(self._clock()), "" if deadline is None else repr(deadline), len(inputs), *inputs,
        )
        kind = _str(res[0])
        if kind == "ok":
            return True
        if kind == "validate":
            return False
        if kind == "dup":
            raise Conflict(f"request {rec.id} is already registered")
        if kind == "status":
            raise Conflict(f"variable {rec.output!r} is already {_str(res[1])}", param=rec.output)
        if kind == "producer":
            raise Conflict(
                f"variable {rec.output!r} is already produced by request {_str(res[1])}",
                param=rec.output,
            )
        if kind == "count":
            _check_count(int(res[1]), int(res[2]), self.max_variables)
        raise ServiceUnavailable(f"unexpected registration answer {kind!r}")

    @_store_errors
    async def put_variable(
        self, tenant: str, session: str, name: str, value: str, *, deadline: float | None = None
    ) -> Variable:
        """A user sets an input variable (creating the session if absent).

        PayloadTooLarge past max_value_bytes; Conflict if it is already
        ready/failed or is some request's output.
        """
        _check_size(name, value, self.max_value_bytes)

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            var_count = int(await pipe.hlen(keys.vars))
            plan = plan_put(name, value, current, var_count, self.max_variables, self._clock())
            plan.deadline = deadline
            return plan

        result: Variable = await self._transact(tenant, session, decide)
        return result

    @_store_errors
    async def set_result(
        self,
        tenant: str,
        session: str,
        name: str,
        value: str,
        *,
        producer: str | None = None,
        record: RequestRecord | None = None,
    ) -> Variable:
        """The producing request stores its output (and, atomically, its final record).

        NotFound if the variable is gone (session deleted or expired);
        Conflict if already ready/failed or `producer` is given and differs;
        PayloadTooLarge past max_value_bytes.
        """
        _check_size(name, value, self.max_value_bytes)

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            plan = plan_result(name, value, current, producer, self._clock())
            if record is not None:
                plan.requests.append(record)
            return plan

        result: Variable = await self._transact(tenant, session, decide)
        return result

    @_store_errors
    async def fail_variable(
        self, tenant: str, session: str, name: str, error: str,
        *, record: RequestRecord | None = None,
    ) -> bool:
        """Mark a pending variable failed (with the producer's final record, atomically);
        False if it is missing or already settled."""

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            plan = plan_fail(name, error, current, self._clock())
            if record is not None and (plan.variables or current is not None):
                plan.requests.append(record)
            return plan

        result: bool = await self._transact(tenant, session, decide)
        return result

    @_store_errors
    async def save_request(self, rec: RequestRecord) -> bool:
        """Overwrite a request record's progress fields in one round trip.

        Only the request's owner (the replica running it) writes its record
        after registration, so no read-modify-write race exists; the script only
        refuses to resurrect a record whose session was deleted. The version is
        not bumped: progress fields do not change the graph's shape.
        """
        keys = self.keys(rec.tenant, rec.session)
        saved = await self._redis.eval(
            _SAVE_RECORD, 2, keys.meta, keys.reqs, rec.id, rec.to_json(), self.ttl_s
        )
        return bool(saved)

    @_store_errors
    async def update_request(self, tenant: str, session: str, rid: str, **fields: Any) -> bool:
        """Set fields of a request record; False if the record is gone."""
        unknown = set(fields) - _UPDATABLE_FIELDS
        if unknown:
            raise TypeError(f"not updatable request fields: {sorted(unknown)}")

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            raw = await pipe.hget(keys.reqs, rid)
            if raw is None:
                return Plan(result=False)
            rec = dataclasses.replace(RequestRecord.from_json(raw), **fields)
            return Plan(result=True, requests=[rec])

        result: bool = await self._transact(tenant, session, decide)
        return result

    @_store_errors
    async def delete_session(self, tenant: str, session: str) -> bool:
        """Drop every key of the session and wake its waiters; False if it did not exist.

        Cancelling its pending requests is the caller's job (list them first).
        """
        keys = self.keys(tenant, session)
        async with self._locks.hold(keys.meta):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*keys.data)
                pipe.publish(keys.channel, Event(tenant, session, "deleted").encode())
                deleted, _ = await pipe.execute()
        return int(deleted) > 0

    # -------------------------------------------------------------- reads

    @_store_errors
    async def get_variable(self, tenant: str, session: str, name: str) -> Variable | None:
        raw = await self._redis.hget(self.keys(tenant, session).vars, name)
        return Variable.from_json(name, raw) if raw is not None else None

    @_store_errors
    async def get_variables(
        self, tenant: str, session: str, names: list[str]
    ) -> dict[str, Variable | None]:
        return await self._load_vars(self._redis, self.keys(tenant, session), names)

    @_store_errors
    async def list_variables(self, tenant: str, session: str) -> list[Variable]:
        raw = await self._redis.hgetall(self.keys(tenant, session).vars)
        return sorted(
            (Variable.from_json(_str(k), v) for k, v in raw.items()), key=lambda v: v.name
        )

    @_store_errors
    async def get_request(self, tenant: str, session: str, rid: str) -> RequestRecord | None:
        raw = await self._redis.hget(self.keys(tenant, session).reqs, rid)
        return RequestRecord.from_json(raw) if raw is not None else None

    @_store_errors
    async def list_requests(self, tenant: str, session: str) -> list[RequestRecord]:
        """Records in creation order."""
        raw = await self._redis.hgetall(self.keys(tenant, session).reqs)
        recs = [RequestRecord.from_json(v) for v in raw.values()]
        return sorted(recs, key=lambda r: (r.created_at, r.id))

    @_store_errors
    async def session_exists(self, tenant: str, session: str) -> bool:
        return bool(await self._redis.exists(self.keys(tenant, session).meta))

    @_store_errors
    async def session_meta(self, tenant: str, session: str) -> dict[str, Any] | None:
        """{"created": float, "deadline": float | None, "version": int} or None."""
        raw = await self._redis.hgetall(self.keys(tenant, session).meta)
        if not raw:
            return None
        d = {_str(k): _str(v) for k, v in raw.items()}
        return {
            "created": float(d.get("created", 0.0)),
            "deadline": float(d["deadline"]) if "deadline" in d else None,
            "version": int(d.get("version", 0)),
        }

    # -------------------------------------------------------------- waits

    @_store_errors
    async def _wait_read(self, tenant: str, session: str, names: list[str]) -> dict[str, Variable]:
        """Current states; absent variables read as pending, a missing session as failed."""
        keys = self.keys(tenant, session)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.meta)
            pipe.hmget(keys.vars, names)
            exists, raw = await pipe.execute()
        if not exists:
            return {n: Variable(n, "failed", error=SESSION_DELETED) for n in names}
        return {
            n: Variable.from_json(n, r) if r is not None else Variable(n)
            for n, r in zip(names, raw)
        }

    async def wait_variables(
        self, tenant: str, session: str, names: list[str], timeout: float
    ) -> dict[str, Variable]:
        """Wait until every named variable is ready or any has failed, at most `timeout` s.

        Returns the states then (pending ones on timeout). A session that does
        not exist (or is deleted meanwhile) reads as failed "session deleted":
        check existence first to answer 404. The first read raises
        ServiceUnavailable if Redis is down; later re-reads ride out an outage
        until the timeout. Wakes on the notifier's events, with a re-read
        every `recheck_s` as a safety net.
        """
        if self.notifier is None:
            raise RuntimeError("wait_variables needs a Notifier")
        names = list(dict.fromkeys(names))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        last: dict[str, Variable] | None = None
        # Register before reading, and clear before each read: no lost wake-up.
        with self.notifier.watch(tenant, session, names) as waiter:
            while True:
                waiter.clear()
                try:
                    last = await self._wait_read(tenant, session, names)
                except ServiceUnavailable:
                    if last is None or loop.time() >= deadline:
                        raise
                else:
                    if settled(last):
                        return last
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return last
                await waiter.wait(min(remaining, self.recheck_s))
