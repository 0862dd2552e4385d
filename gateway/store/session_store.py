"""The store's Redis I/O: session state (variables, request records, meta), atomic
writes, reads and long-poll waits.

Key layout; all keys of one session share the hash tag ``{<tenant>:<session>}``
so Redis Cluster keeps them in one slot and one MULTI may touch them all::

    <prefix>:{<tenant>:<session>}:meta    hash  created, deadline, version, graph
    <prefix>:{<tenant>:<session>}:vars    hash  variable name -> JSON
    <prefix>:{<tenant>:<session>}:reqs    hash  request id -> JSON
    <prefix>:{<tenant>:<session>}:work    hash  request id -> owner replica + "\n" + JSON
    <prefix>:{<tenant>:<session>}:events  pub/sub channel (gateway/notifier.py)

``version`` is bumped by every write, ``graph`` by registrations only (the shape
of the graph changed: replicas caching it re-read). A request's ``work`` entry
(gateway/work.py) lives from its registration until its output is settled.

<tenant> is percent-encoded (no ``:``, ``{`` or ``}`` left) and session ids
cannot hold those characters either, so two (tenant, session) pairs never
share a key.

Registration runs as one Lua script (``scripts.py``) unless a cycle check needs
the whole graph; a producer's result or failure is one script too (``SETTLE``), a
record's progress is saved by another, and a session is deleted in one MULTI.
The other writes go through `SessionStore._transact`: WATCH
meta, read, decide with the pure ``plan_*`` functions of ``plans.py``, then one
MULTI with the writes, a version bump, a TTL refresh of every key and the
PUBLISH of the events. Since every write bumps ``meta.version`` (and DEL removes
meta), watching meta alone catches any concurrent change. A per-session asyncio
lock serialises the writers of one process, so WATCH retries only happen between
replicas. Waits long-poll on the notifier's events with a periodic re-read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import WatchError

from common.errors import ServiceUnavailable
from gateway.notifier import Event, Notifier, Waiter

from . import scripts
from .keys import KeyedLocks, SessionKeys, parse_tag, session_tag, store_errors, to_str
from .plans import (
    Plan,
    Registered,
    check_register,
    check_size,
    cycle_possible,
    plan_fail,
    plan_put,
    plan_register,
    plan_result,
    settled,
)
from .records import RequestRecord, Variable

__all__ = ["SESSION_DELETED", "SessionKeys", "SessionStore", "parse_tag", "session_tag",
           "store_errors"]

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

T = TypeVar("T")

SESSION_DELETED = "session deleted"
_MAX_ATTEMPTS = 50  # WATCH retries before calling it contention


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
        self._locks = KeyedLocks()
        self.outages = 0  # operations that found Redis unavailable (a restart, a failover)
        self._scripts: dict[str, Any] = {}  # script text -> redis-py's script (EVALSHA)

    async def _eval(self, script: str, numkeys: int, *args: Any) -> Any:
        """Run one of ``scripts.py``'s scripts by its SHA1 (EVALSHA; redis-py loads it
        again after a Redis restart). EVAL sent the 1-2 KB text with every call and Redis
        hashed it every time: 178 us of Redis time per call against 133 with EVALSHA
        (`python -m benchmarks.semantic_overhead`, Redis's commandstats)."""
        script_obj = self._scripts.get(script)
        if script_obj is None:
            script_obj = self._scripts[script] = self._redis.register_script(script)
        return await script_obj(keys=args[:numkeys], args=args[numkeys:])

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
                    # After the commit, not inside it: a Redis Cluster transaction takes
                    # only commands of its slot, and PUBLISH has none.
                    for name, kind in plan.events:
                        await self._redis.publish(
                            keys.channel, Event(tenant, session, kind, name).encode())
                    self._wake_here(tenant, session, plan.events, plan.variables)
                    return plan.result
        raise ServiceUnavailable("state store contention: too many concurrent writers")

    def _queue(
        self, pipe: Pipeline, keys: SessionKeys, tenant: str, session: str, plan: Plan
    ) -> None:
        pipe.hsetnx(keys.meta, "created", self._clock())
        if plan.deadline is not None:
            pipe.hsetnx(keys.meta, "deadline", plan.deadline)
        pipe.hincrby(keys.meta, "version", 1)
        if plan.reshaped:
            pipe.hincrby(keys.meta, "graph", 1)
        if plan.variables:
            pipe.hset(keys.vars, mapping={v.name: v.to_json() for v in plan.variables})
        if plan.requests:
            pipe.hset(keys.reqs, mapping={r.id: r.to_json() for r in plan.requests})
        if plan.work:
            pipe.hset(keys.work, mapping=plan.work)
        if plan.done:
            pipe.hdel(keys.work, *plan.done)
        for key in keys.data:
            pipe.expire(key, self.ttl_s)

    @staticmethod
    async def _load_vars(
        pipe: Redis, keys: SessionKeys, names: Iterable[str]
    ) -> dict[str, Variable | None]:
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        raw = await pipe.hmget(keys.vars, names)
        return {n: Variable.from_json(n, r) if r is not None else None for n, r in zip(names, raw)}

    @store_errors
    async def register_request(
        self,
        rec: RequestRecord,
        validate: Callable[[list[RequestRecord]], None] | None = None,
        deadline: float | None = None,
        work: bytes | None = None,
    ) -> Registered:
        """Record a request and declare its variables, atomically.

        Raises Conflict if the id is taken or the output already has a producer
        or a value, PayloadTooLarge (code too_many_variables) past the variable
        limit. `validate(existing_records)` runs on the same snapshot the write
        is based on (it may run again on a retry) when a cycle is possible (the
        output already has consumers and the request has inputs), and refuses by
        raising, e.g. DependencyCycle; then nothing is written. Creates the
        session (with `deadline`, an absolute epoch time) if absent. `work`, the
        request's work entry (gateway/work.py), is written with it.
        """
        done = await self._register_fast(rec, deadline, validate=validate is not None, work=work)
        if done is not None:
            return done

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            taken = bool(await pipe.hexists(keys.reqs, rec.id))
            names = ([rec.output] if rec.output else []) + list(rec.inputs)
            current = await self._load_vars(pipe, keys, names)
            check_register(rec, current, taken)  # the refusals first, as the script does
            if validate is not None and cycle_possible(rec, current):
                raw = await pipe.hgetall(keys.reqs)
                validate([RequestRecord.from_json(v) for v in raw.values()])
            var_count = int(await pipe.hlen(keys.vars))
            now = self._clock()
            plan = plan_register(rec, current, var_count, self.max_variables, now, id_taken=taken)
            plan.deadline = deadline
            if work is not None:
                plan.work[rec.id] = work
            created, stored_deadline, graph = await pipe.hmget(
                keys.meta, ["created", "deadline", "graph"])
            if any(v is not None and v.status == "pending" and v.producer is not None
                   for n, v in current.items() if n in rec.inputs):
                plan.events.append((str(int(graph or 0) + 1), "graph"))
            until = stored_deadline if stored_deadline is not None else deadline
            plan.result = Registered(
                float(created) if created is not None else now,
                float(until) if until is not None else None,
                int(graph or 0) + 1,
            )
            return plan

        result: Registered = await self._transact(rec.tenant, rec.session, decide)
        return result

    async def _register_fast(self, rec: RequestRecord, deadline: float | None, *,
                             validate: bool, work: bytes | None) -> Registered | None:
        """The registration in one atomic script (one round trip, no WATCH, no lock):
        `plan_register`'s checks and writes. None when a cycle is possible and
        `validate` is wanted: then the transaction path reads the graph."""
        keys = self.keys(rec.tenant, rec.session)
        args = scripts.register_args(
            rec, ttl_s=self.ttl_s, max_variables=self.max_variables, now=self._clock(),
            deadline=deadline, validate=validate, work=work, channel=keys.channel,
            event=Event(rec.tenant, rec.session, "graph", "#").encode() if rec.inputs else "",
        )
        answer = await self._eval(scripts.REGISTER, 4, *keys.data, *args)
        return scripts.register_outcome(answer, rec, self.max_variables)

    @store_errors
    async def put_variable(
        self, tenant: str, session: str, name: str, value: str, *, deadline: float | None = None
    ) -> Variable:
        """A user sets an input variable (creating the session if absent).

        PayloadTooLarge past max_value_bytes; Conflict if it is already
        ready/failed or is some request's output.
        """
        check_size(name, value, self.max_value_bytes)
        fast = await self._put_fast(tenant, session, name, value, deadline)
        if fast is not None:
            return fast

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            var_count = int(await pipe.hlen(keys.vars))
            plan = plan_put(name, value, current, var_count, self.max_variables, self._clock())
            plan.deadline = deadline
            return plan

        result: Variable = await self._transact(tenant, session, decide)
        return result

    async def _put_fast(self, tenant: str, session: str, name: str, value: str,
                        deadline: float | None) -> Variable | None:
        """`plan_put` and its writes in one script. None only where a test turns it off."""
        keys = self.keys(tenant, session)
        now = self._clock()
        answer = await self._eval(
            scripts.PUT, 4, *keys.data, name, value, self.max_variables, repr(now), self.ttl_s,
            "" if deadline is None else repr(deadline), keys.channel,
            Event(tenant, session, "ready", name).encode(),
        )
        var = scripts.put_outcome(answer, name, value, now, self.max_variables)
        self._wake_here(tenant, session, [(name, "ready")], [var])
        return var

    @store_errors
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
        """The producing request stores its output (and, atomically, its final record,
        dropping its work entry).

        NotFound if the variable is gone (session deleted or expired);
        Conflict if already ready/failed or `producer` is given and differs;
        PayloadTooLarge past max_value_bytes.
        """
        check_size(name, value, self.max_value_bytes)
        fast = await self._settle_fast(tenant, session, name, "ready", value, producer, record)
        if fast is not None:
            assert isinstance(fast, Variable)
            return fast

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            plan = plan_result(name, value, current, producer, self._clock())
            if record is not None:
                plan.requests.append(record)
                plan.done.append(record.id)
            return plan

        result: Variable = await self._transact(tenant, session, decide)
        return result

    @store_errors
    async def fail_variable(
        self, tenant: str, session: str, name: str, error: str,
        *, record: RequestRecord | None = None,
    ) -> bool:
        """Mark a pending variable failed (with the producer's final record, atomically,
        dropping its work entry); False if it is missing or already settled."""
        fast = await self._settle_fast(tenant, session, name, "failed", error, None, record)
        if fast is not None:
            return bool(fast)

        async def decide(pipe: Pipeline, keys: SessionKeys) -> Plan:
            current = (await self._load_vars(pipe, keys, [name]))[name]
            plan = plan_fail(name, error, current, self._clock())
            if record is not None and (plan.variables or current is not None):
                plan.requests.append(record)
                plan.done.append(record.id)
            return plan

        result: bool = await self._transact(tenant, session, decide)
        return result

    async def _settle_fast(
        self, tenant: str, session: str, name: str, kind: str, text: str,
        producer: str | None, record: RequestRecord | None,
    ) -> Variable | bool | None:
        """`plan_result` / `plan_fail` and their writes in one script (one round trip, no
        WATCH, no lock). None only where a subclass or test turns the fast path off."""
        keys = self.keys(tenant, session)
        now = self._clock()
        event = Event(tenant, session, "ready" if kind == "ready" else "failed", name).encode()
        answer = await self._eval(
            scripts.SETTLE, 4, *keys.data, name, kind, text, producer or "",
            record.id if record is not None else "", record.to_json() if record is not None else "",
            self.ttl_s, repr(now), keys.channel, event,
        )
        result = scripts.settle_outcome(answer, name, text, producer, now)
        if isinstance(result, Variable) and self.notifier is not None:
            if kind == "ready":  # local waiters take the value from the event: no re-read
                self.notifier.dispatch(Event(tenant, session, "ready", name, value=text,
                                             written_at=self._clock()))
            else:
                self._wake_here(tenant, session, [(name, "failed")])
        return result

    def _wake_here(self, tenant: str, session: str, events: Iterable[tuple[str | None, Any]],
                   written: Iterable[Variable] = ()) -> None:
        """Wake this process's waiters at once, handing them the values just written; the
        published event reaches the other replicas (and, later and harmlessly, this one
        again)."""
        if self.notifier is None:
            return
        values = {v.name: v.value for v in written if v.status == "ready"}
        now = self._clock()
        for name, kind in events:
            value = values.get(name) if name is not None and kind == "ready" else None
            self.notifier.dispatch(Event(tenant, session, kind, name, value=value,
                                         written_at=now if value is not None else None))

    @store_errors
    async def save_request(self, rec: RequestRecord) -> bool:
        """Overwrite a request record's progress fields in one round trip.

        Only the request's owner (the replica running it) writes its record
        after registration, so no read-modify-write race exists; the script only
        refuses to resurrect a record whose session was deleted. The version is
        not bumped: progress fields do not change the graph's shape.
        """
        keys = self.keys(rec.tenant, rec.session)
        saved = await self._eval(
            scripts.SAVE_RECORD, 2, keys.meta, keys.reqs, rec.id, rec.to_json(), self.ttl_s
        )
        return bool(saved)

    @store_errors
    async def delete_session(self, tenant: str, session: str) -> bool:
        """Drop every key of the session and wake its waiters; False if it did not exist.

        Cancelling its pending requests is the caller's job (list them first).
        """
        keys = self.keys(tenant, session)
        deleted = await self._eval(scripts.DELETE, 4, *keys.data, keys.channel,
                                   Event(tenant, session, "deleted").encode())
        self._wake_here(tenant, session, [(None, "deleted")])
        return int(deleted) > 0

    # -------------------------------------------------------------- reads

    @store_errors
    async def get_variable(self, tenant: str, session: str, name: str) -> Variable | None:
        raw = await self._redis.hget(self.keys(tenant, session).vars, name)
        return Variable.from_json(name, raw) if raw is not None else None

    @store_errors
    async def list_variables(self, tenant: str, session: str) -> list[Variable]:
        raw = await self._redis.hgetall(self.keys(tenant, session).vars)
        return sorted(
            (Variable.from_json(to_str(k), v) for k, v in raw.items()), key=lambda v: v.name
        )

    @store_errors
    async def list_requests(self, tenant: str, session: str) -> list[RequestRecord]:
        """Records in creation order."""
        raw = await self._redis.hgetall(self.keys(tenant, session).reqs)
        recs = [RequestRecord.from_json(v) for v in raw.values()]
        return sorted(recs, key=lambda r: (r.created_at, r.id))

    @store_errors
    async def session_exists(self, tenant: str, session: str) -> bool:
        return bool(await self._redis.exists(self.keys(tenant, session).meta))

    # -------------------------------------------------------------- waits

    @store_errors
    async def graph_version(self, tenant: str, session: str) -> int:
        """The session graph's version (registrations so far): one small read."""
        return int(await self._redis.hget(self.keys(tenant, session).meta, "graph") or 0)

    @store_errors
    async def read_graph(self, tenant: str, session: str) -> tuple[list[RequestRecord], int]:
        """Every record (creation order) and the graph version they are at, in one read."""
        keys = self.keys(tenant, session)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.meta, "graph")
            pipe.hgetall(keys.reqs)
            graph, raw = await pipe.execute()
        recs = sorted((RequestRecord.from_json(v) for v in raw.values()),
                      key=lambda r: (r.created_at, r.id))
        return recs, int(graph or 0)

    # -------------------------------------------------------------- work records

    @store_errors
    async def claim_work(
        self, tenant: str, session: str, dead: str, owner: str
    ) -> list[tuple[RequestRecord, bytes]]:
        """Take over every work entry `dead` holds in the session (atomically: of two
        replicas claiming at once, one gets each entry): (record, work JSON) pairs."""
        keys = self.keys(tenant, session)
        raw = await self._eval(scripts.CLAIM, 3, keys.meta, keys.reqs, keys.work, dead, owner)
        return [(RequestRecord.from_json(raw[i + 1]), bytes(raw[i + 2]))
                for i in range(0, len(raw), 3)]

    @store_errors
    async def work_owner(self, tenant: str, session: str, rid: str) -> str | None:
        """The replica that owns request `rid`'s work now (None: finished or unknown)."""
        keys = self.keys(tenant, session)
        owner = to_str(await self._eval(scripts.OWNER, 1, keys.work, rid))
        return owner or None

    # -------------------------------------------------------------- waits

    @store_errors
    async def _wait_read(
        self, tenant: str, session: str, names: list[str]
    ) -> tuple[dict[str, Variable], int | None]:
        """Current states and graph version; absent variables read as pending, a missing
        session as failed (version None)."""
        keys = self.keys(tenant, session)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.meta, ["created", "graph"])
            pipe.hmget(keys.vars, names)
            (created, graph), raw = await pipe.execute()
        if created is None:
            return {n: Variable(n, "failed", error=SESSION_DELETED) for n in names}, None
        return {
            n: Variable.from_json(n, r) if r is not None else Variable(n)
            for n, r in zip(names, raw)
        }, int(graph or 0)

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
        return (await self.wait_inputs(tenant, session, names, timeout))[0]

    async def wait_inputs(
        self, tenant: str, session: str, names: list[str], timeout: float, *,
        waiter: Waiter | None = None, initial: tuple[dict[str, Variable], int] | None = None,
    ) -> tuple[dict[str, Variable], int | None]:
        """`wait_variables`, also giving the session's graph version as last read.

        ``waiter``: one opened on the notifier before ``initial`` was read (e.g. by the
        registration, which returns the inputs' states): then the first read is skipped,
        and the caller closes the waiter.
        """
        if self.notifier is None:
            raise RuntimeError("wait_variables needs a Notifier")
        names = list(dict.fromkeys(names))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        last: tuple[dict[str, Variable], int | None] | None = None
        own = waiter is None
        # Register before reading, and clear before each read: no lost wake-up.
        w = self.notifier.open(tenant, session, names) if waiter is None else waiter
        try:
            while True:
                if initial is not None and all(n in initial[0] for n in names):
                    last = ({n: initial[0][n] for n in names}, initial[1])
                    initial = None  # events since the waiter opened are still noted in it
                else:
                    w.clear()
                    try:
                        last = await self._wait_read(tenant, session, names)
                    except ServiceUnavailable:
                        if last is None or loop.time() >= deadline:
                            raise
                if settled(last[0]):
                    return last
                pending = {n for n, v in last[0].items() if v.status == "pending"}
                while True:  # re-read only once the events say it would settle
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return last
                    if not await w.wait(min(remaining, self.recheck_s)):
                        break  # the periodic safety re-read
                    if w.known(pending):
                        # Written by this process after our read saw the session: the
                        # values are current; the graph version is read on its own (a
                        # copy held here misses registrations made on other replicas),
                        # unknown (None: that copy) while Redis is unreachable.
                        states = dict(last[0])
                        for n in pending:
                            value, at = w.values[n]
                            states[n] = Variable(n, "ready", value=value, updated_at=at)
                        try:
                            return states, await self.graph_version(tenant, session)
                        except ServiceUnavailable:
                            return states, None
                    if w.announced(pending):
                        break
                    w.rearm()
        finally:
            if own:
                self.notifier.close(tenant, session, w)
