"""The Lua fast paths of registration and of results and failures (gateway/store/scripts.py)
against the pure plans (gateway/store/plans.py): one property test over random histories,
on a real redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ParrotError
from gateway.store import (
    RequestRecord,
    SessionStore,
    Variable,
    plan_fail,
    plan_put,
    plan_register,
    plan_result,
)
from gateway.store.plans import Registered, check_size

T = "acme"

NAMES = ["a", "b", "c", "d"]
RIDS = ["r0", "r1", "r2"]
MAX_VALUE_BYTES = 8


@dataclass(frozen=True)
class Register:
    rid: str
    inputs: tuple[str, ...]
    output: str | None
    deadline: float | None


@dataclass(frozen=True)
class Put:
    name: str
    value: str


@dataclass(frozen=True)
class Result:
    name: str
    value: str
    producer: str | None
    record: str | None = None  # the producer's final record, written with it


@dataclass(frozen=True)
class Fail:
    name: str
    error: str
    record: str | None = None


Op = Register | Put | Result | Fail
Outcome = tuple[str, object]
State = tuple[dict[str, Variable], dict[str, RequestRecord], dict[str, float]]

_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=5)  # some > 8 bytes
_ops = st.one_of(
    st.builds(Register, st.sampled_from(RIDS), st.lists(st.sampled_from(NAMES), max_size=3).map(tuple),
              st.none() | st.sampled_from(NAMES), st.none() | st.sampled_from([50.0, 75.5])),
    st.builds(Put, st.sampled_from(NAMES), _values),
    st.builds(Result, st.sampled_from(NAMES), _values, st.none() | st.sampled_from(RIDS),
              st.none() | st.sampled_from(RIDS)),
    st.builds(Fail, st.sampled_from(NAMES), st.sampled_from(["boom", "upstream_failed: é/\"\n"]),
              st.none() | st.sampled_from(RIDS)),
)


def _record(op: Register, session: str, now: float) -> RequestRecord:
    return RequestRecord(id=op.rid, tenant=T, session=session, inputs=list(op.inputs),
                         output=op.output, created_at=now)


def _final(rid: str | None, session: str, status: str) -> RequestRecord | None:
    if rid is None:
        return None
    return RequestRecord(id=rid, tenant=T, session=session, inputs=[], output=None,
                         status=status, created_at=1.0, finished_at=2.0)


def _outcome(result: object) -> Outcome:
    return ("ok", result.to_public() if isinstance(result, Variable) else result)


class MemorySession:
    """The pure plans applied to state held in memory: what the store must do."""

    def __init__(self, max_variables: int) -> None:
        self.max_variables = max_variables
        self.vars: dict[str, Variable] = {}
        self.reqs: dict[str, RequestRecord] = {}
        self.meta: dict[str, float] = {}

    def run(self, op: Op, session: str, now: float) -> Outcome:
        try:
            return _outcome(self._plan(op, session, now))
        except ParrotError as exc:
            return ("error", (type(exc).__name__, exc.body()))

    def _plan(self, op: Op, session: str, now: float) -> object:
        deadline = None
        if isinstance(op, Register):
            r = _record(op, session, now)
            names = ([r.output] if r.output else []) + list(r.inputs)
            current = {n: self.vars.get(n) for n in names}
            plan = plan_register(r, current, len(self.vars), self.max_variables, now,
                                 id_taken=r.id in self.reqs)
            deadline = op.deadline
            until = self.meta.get("deadline", deadline)
            plan.result = Registered(self.meta.get("created", now), until,
                                     int(self.meta.get("graph", 0)) + 1)
        elif isinstance(op, Put):
            check_size(op.name, op.value, MAX_VALUE_BYTES)
            plan = plan_put(op.name, op.value, self.vars.get(op.name), len(self.vars),
                            self.max_variables, now)
        elif isinstance(op, Result):
            check_size(op.name, op.value, MAX_VALUE_BYTES)
            plan = plan_result(op.name, op.value, self.vars.get(op.name), op.producer, now)
            record = _final(op.record, session, "done")
            if record is not None:
                plan.requests.append(record)
        else:
            current = self.vars.get(op.name)
            plan = plan_fail(op.name, op.error, current, now)
            record = _final(op.record, session, "failed")
            if record is not None and (plan.variables or current is not None):
                plan.requests.append(record)
        if plan.writes:
            self.meta.setdefault("created", now)
            if deadline is not None:
                self.meta.setdefault("deadline", deadline)
            self.meta["version"] = self.meta.get("version", 0) + 1
            if plan.reshaped:
                self.meta["graph"] = self.meta.get("graph", 0) + 1
            self.vars.update({v.name: v for v in plan.variables})
            self.reqs.update({q.id: q for q in plan.requests})
        return plan.result

    def state(self) -> State:
        return dict(self.vars), dict(self.reqs), dict(self.meta)


async def _run_on_store(store: SessionStore, op: Op, session: str, now: float) -> Outcome:
    try:
        if isinstance(op, Register):
            return _outcome(await store.register_request(_record(op, session, now),
                                                         deadline=op.deadline))
        if isinstance(op, Put):
            return _outcome(await store.put_variable(T, session, op.name, op.value))
        if isinstance(op, Result):
            return _outcome(await store.set_result(
                T, session, op.name, op.value, producer=op.producer,
                record=_final(op.record, session, "done")))
        return _outcome(await store.fail_variable(T, session, op.name, op.error,
                                                  record=_final(op.record, session, "failed")))
    except ParrotError as exc:
        return ("error", (type(exc).__name__, exc.body()))


async def _stored_state(store: SessionStore, session: str) -> State:
    variables = {v.name: v for v in await store.list_variables(T, session)}
    records = {r.id: r for r in await store.list_requests(T, session)}
    raw = await store._redis.hgetall(store.keys(T, session).meta)
    return variables, records, {k.decode(): float(v) for k, v in raw.items()}


async def _replay(url: str, max_variables: int, history: list[Op]) -> None:
    clock = [1000.0]
    client = aioredis.from_url(url)
    kw = dict(max_variables=max_variables, max_value_bytes=MAX_VALUE_BYTES,
              clock=lambda: clock[0])
    lua = SessionStore(client, **kw)  # type: ignore[arg-type]
    txn = SessionStore(client, **kw)  # type: ignore[arg-type]
    transactions: list[str] = []
    lua_transact = lua._transact

    async def spy(tenant: str, session: str, decide: object) -> object:
        transactions.append(session)
        return await lua_transact(tenant, session, decide)  # type: ignore[arg-type]

    async def no_fast_path(*_: object, **__: object) -> None:
        return None

    lua._transact = spy  # type: ignore[method-assign]
    txn._register_fast = no_fast_path  # type: ignore[method-assign]
    txn._settle_fast = no_fast_path  # type: ignore[method-assign]
    txn._put_fast = no_fast_path  # type: ignore[method-assign]
    model = MemorySession(max_variables)
    run = uuid.uuid4().hex[:8]
    try:
        for step, op in enumerate(history):
            clock[0] = 1000.0 + step * 0.25
            expected = model.run(op, f"{run}-mem", clock[0])
            before = len(transactions)
            got = await _run_on_store(lua, op, f"{run}-lua", clock[0])
            assert len(transactions) == before, "not the Lua path"
            assert got == expected, (step, op, "lua")
            assert await _run_on_store(txn, op, f"{run}-txn", clock[0]) == expected, (step, op)
            want = model.state()
            for path in ("lua", "txn"):
                variables, records, meta = await _stored_state(lua, f"{run}-{path}")
                assert variables == want[0], (step, op, path)
                assert {k: dataclasses.replace(r, session=f"{run}-mem") for k, r in records.items()} \
                    == want[1], (step, op, path)
                assert meta == want[2], (step, op, path)
    finally:
        await client.aclose()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(max_variables=st.integers(2, 5), history=st.lists(_ops, min_size=1, max_size=12))
def test_lua_registration_and_pure_plans_agree_on_random_histories(
    redis_url: str, max_variables: int, history: list[Op]
) -> None:
    """Each history of registrations (random inputs and outputs, duplicate ids, second
    producers, past the variable limit), puts, results and fails runs three ways: the
    store with its Lua fast paths, the store with only its WATCH/MULTI path, and the pure
    plans over memory. Every step gives the same outcome (result or error) and leaves
    the same variables, records and session meta behind."""
    asyncio.run(_replay(redis_url, max_variables, history))
