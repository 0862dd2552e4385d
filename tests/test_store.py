"""SessionStore and Notifier against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from common.errors import (
    BadRequest,
    Conflict,
    DependencyCycle,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from gateway.notifier import Event, Notifier
from gateway.redis_server import RedisServer
from gateway.store import RequestRecord, SessionStore, Variable, plan_register, settled

T, S = "acme", "run-1"


class Replica:
    """One gateway replica's view: its own client, notifier and store."""

    def __init__(self, url: str, *, share_client: bool = False, **kw: object) -> None:
        self.redis = aioredis.from_url(url)
        # the notifier takes a URL or borrows the settings of a client
        self.notifier = Notifier(
            self.redis if share_client else url, ping_interval_s=0.5, backoff_max_s=0.2
        )
        self.store = SessionStore(
            self.redis, notifier=self.notifier, **kw  # type: ignore[arg-type]
        )

    async def start(self) -> Replica:
        assert await self.notifier.start(timeout=5)
        return self

    async def close(self) -> None:
        await self.notifier.stop()
        await self.redis.aclose()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Callable[..., asyncio.Future[Replica]]]:
    made: list[Replica] = []

    async def make(**kw: object) -> Replica:
        r = await Replica(redis_url, **kw).start()
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        await r.close()


@pytest.fixture
async def store(replicas: Callable[..., asyncio.Future[Replica]]) -> SessionStore:
    return (await replicas()).store


async def meta_of(store: SessionStore, tenant: str, session: str) -> dict[str, float]:
    """The session's meta hash, read straight from Redis ({} when the session is gone)."""
    raw = await store._redis.hgetall(store.keys(tenant, session).meta)
    return {k.decode(): float(v) for k, v in raw.items()}


async def record_of(store: SessionStore, tenant: str, rid: str) -> RequestRecord | None:
    return next((r for r in await store.list_requests(tenant, S) if r.id == rid), None)


def rec(rid: str, inputs: list[str], output: str | None, tenant: str = T) -> RequestRecord:
    return RequestRecord(
        id=rid, tenant=tenant, session=S, inputs=inputs, output=output, created_at=time.time()
    )


# ----------------------------------------------------------------- write-once


async def test_put_is_write_once(store: SessionStore) -> None:
    var = await store.put_variable(T, S, "x", "hello")
    assert var.to_public() == {"name": "x", "status": "ready", "value": "hello", "error": None}
    with pytest.raises(Conflict):
        await store.put_variable(T, S, "x", "again")
    assert (await store.get_variable(T, S, "x")).value == "hello"  # type: ignore[union-attr]
    assert await store.session_exists(T, S)


async def test_put_on_produced_variable_conflicts(store: SessionStore) -> None:
    await store.register_request(rec("r1", [], "out"))
    with pytest.raises(Conflict, match="r1"):
        await store.put_variable(T, S, "out", "mine")
    with pytest.raises(Conflict):
        await store.set_result(T, S, "out", "v", producer="someone-else")
    var = await store.set_result(T, S, "out", "v", producer="r1")
    assert var.status == "ready" and var.producer == "r1"
    with pytest.raises(Conflict):
        await store.set_result(T, S, "out", "v2")
    with pytest.raises(Conflict):  # a second producer
        await store.register_request(rec("r2", [], "out"))


async def test_oversize_value_is_refused(replicas: Callable[..., asyncio.Future[Replica]]) -> None:
    store = (await replicas(max_value_bytes=10)).store
    with pytest.raises(PayloadTooLarge):
        await store.put_variable(T, S, "x", "é" * 6)  # 12 bytes, 6 characters
    assert not await store.session_exists(T, S)
    await store.register_request(rec("r1", [], "y"))
    with pytest.raises(PayloadTooLarge):
        await store.set_result(T, S, "y", "x" * 11)
    assert (await store.put_variable(T, S, "x", "x" * 10)).status == "ready"


async def test_variable_count_limit(replicas: Callable[..., asyncio.Future[Replica]]) -> None:
    store = (await replicas(max_variables=3)).store
    await store.register_request(rec("r1", ["a", "b"], "c"))
    with pytest.raises(PayloadTooLarge) as info:
        await store.register_request(rec("r2", ["c"], "d"))
    assert info.value.code == "too_many_variables"
    with pytest.raises(PayloadTooLarge):
        await store.put_variable(T, S, "z", "v")
    await store.put_variable(T, S, "a", "v")  # existing variables stay writable


async def test_set_result_after_delete_is_not_found(store: SessionStore) -> None:
    await store.register_request(rec("r1", [], "y"))
    assert await store.delete_session(T, S)
    with pytest.raises(NotFound):
        await store.set_result(T, S, "y", "late")
    assert not await store.fail_variable(T, S, "y", "boom")
    assert not await store.session_exists(T, S)  # nothing resurrected
    assert not await store.delete_session(T, S)


# ------------------------------------------------------------- registration


async def test_register_declares_graph(store: SessionStore) -> None:
    await store.register_request(rec("r1", ["q"], "a"), deadline=1234.5)
    await store.register_request(rec("r2", ["q", "a", "a"], "b"))
    vs = {v.name: v for v in await store.list_variables(T, S)}
    assert sorted(vs) == ["a", "b", "q"]
    assert vs["q"].consumers == ["r1", "r2"] and vs["q"].producer is None
    assert vs["a"].producer == "r1" and vs["a"].consumers == ["r2"]
    assert all(v.status == "pending" for v in vs.values())
    assert [r.id for r in await store.list_requests(T, S)] == ["r1", "r2"]
    meta = await meta_of(store, T, S)
    assert meta["deadline"] == 1234.5 and meta["version"] == 2 and meta["graph"] == 2
    with pytest.raises(Conflict):  # same id twice
        await store.register_request(rec("r1", [], "other"))


async def test_register_validate_can_refuse(store: SessionStore) -> None:
    await store.register_request(rec("r1", ["b"], "a"))
    seen: list[list[str]] = []

    def refuse(existing: list[RequestRecord]) -> None:
        seen.append([r.id for r in existing])
        raise DependencyCycle(["a", "b", "a"])

    with pytest.raises(DependencyCycle):
        await store.register_request(rec("r2", ["a"], "b"), validate=refuse)
    assert seen == [["r1"]]
    assert await record_of(store, T, "r2") is None
    b = await store.get_variable(T, S, "b")
    assert b is not None and b.producer is None and b.consumers == ["r1"]
    assert (await meta_of(store, T, S))["version"] == 1


async def test_concurrent_register_same_output_one_wins(
    replicas: Callable[..., asyncio.Future[Replica]],
) -> None:
    a, b = (await replicas()).store, (await replicas()).store
    for round_ in range(5):
        out = f"o{round_}"
        results = await asyncio.gather(
            *(s.register_request(rec(f"{out}-{i}", ["x"], out)) for i, s in enumerate([a, b] * 3)),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(r, Conflict) for r in results if r not in winners)
        var = await a.get_variable(T, S, out)
        assert var is not None and var.producer is not None
        assert await record_of(a, T, var.producer) is not None
    x = await a.get_variable(T, S, "x")
    assert x is not None and len(x.consumers) == 5  # losers never touched it


async def test_save_request_and_public_view(store: SessionStore) -> None:
    r = rec("r1", [], "a")
    r.created_at = 100.0
    await store.register_request(r)
    r.status, r.ready_at, r.started_at, r.finished_at = "done", 100.5, 101.0, 102.25
    r.engine, r.prompt_tokens, r.cached_tokens = "e0", 10, 4
    r.criteria_effective, r.group = "throughput", "grp:x"
    assert await store.save_request(r)
    got = await record_of(store, T, "r1")
    assert got == r
    pub = got.to_public()
    assert pub["status"] == "done" and pub["engine"] == "e0" and pub["cached_tokens"] == 4
    assert pub["queued_ms"] == 500.0 and pub["run_ms"] == 1250.0
    assert pub["criteria_effective"] == "throughput" and pub["group_effective"] == "grp:x"
    assert not await store.save_request(rec("nope", [], None))  # never creates a record
    assert await record_of(store, T, "nope") is None
    assert await store.delete_session(T, S)
    assert not await store.save_request(r)  # nor resurrects a deleted session
    assert not await store.session_exists(T, S)


# --------------------------------------------------------------- TTL, tenants


async def test_ttl_applied_to_all_session_keys(
    replicas: Callable[..., asyncio.Future[Replica]], redis_url: str
) -> None:
    store = (await replicas(ttl_s=120)).store
    await store.register_request(rec("r1", ["q"], "a"), work=b"gw-1\n{}")
    keys = store.keys(T, S)
    raw = aioredis.from_url(redis_url)
    try:
        for key in keys.data:
            assert 0 < await raw.ttl(key) <= 120, key
        await raw.expire(keys.vars, 5)
        await store.put_variable(T, S, "q", "v")  # a write refreshes every key
        assert await raw.ttl(keys.vars) > 100
        assert sorted(await raw.keys("*")) == sorted(k.encode() for k in keys.data)
    finally:
        await raw.aclose()


async def test_tenant_isolation(store: SessionStore) -> None:
    await store.put_variable("t1", S, "x", "one")
    await store.put_variable("t2", S, "x", "two")  # no conflict across tenants
    assert (await store.get_variable("t1", S, "x")).value == "one"  # type: ignore[union-attr]
    assert (await store.get_variable("t2", S, "x")).value == "two"  # type: ignore[union-attr]
    # tenants whose names would collide if keys were naively joined
    await store.put_variable("a:b", "c", "x", "ab-c")
    assert await store.get_variable("a%3Ab", "c", "x") is None
    assert await store.get_variable("a}", "c", "x") is None
    assert await store.delete_session("t1", S)
    assert await store.get_variable("t2", S, "x") is not None
    assert store.keys("a:b", "c").meta != store.keys("a", "b").meta


def test_keys_share_one_hash_tag() -> None:
    store = SessionStore(None)  # type: ignore[arg-type]
    for tenant in ["acme", "a:b", "{x}", "a}b{c", "ümlaut", "%3A"]:
        keys = store.keys(tenant, S)
        tags = {k[k.index("{") + 1 : k.index("}")] for k in (*keys.data, keys.channel)}
        assert len(tags) == 1, keys
    assert store.keys("a:b", "c").meta != store.keys("a%3Ab", "c").meta
    with pytest.raises(BadRequest):
        store.keys(T, "bad:session")


# ----------------------------------------------------------------------- waits


async def test_wait_wakes_on_set_from_other_replica(
    replicas: Callable[..., asyncio.Future[Replica]],
) -> None:
    a, b = (await replicas()).store, (await replicas(share_client=True)).store
    a.recheck_s = b.recheck_s = 30.0  # only a notification can wake it in time
    await a.register_request(rec("r1", ["q"], "out"))
    await a.put_variable(T, S, "q", "in")
    waiting = asyncio.create_task(a.wait_variables(T, S, ["q", "out"], timeout=10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    t0 = time.monotonic()
    await b.set_result(T, S, "out", "done")
    states = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - t0 < 0.5
    assert states["out"].status == "ready" and states["out"].value == "done"
    assert settled(states)


async def test_wait_returns_on_failure(replicas: Callable[..., asyncio.Future[Replica]]) -> None:
    a, b = (await replicas()).store, (await replicas()).store
    a.recheck_s = 30.0
    await a.register_request(rec("r1", [], "x"))
    await a.register_request(rec("r2", [], "y"))
    waiting = asyncio.create_task(a.wait_variables(T, S, ["x", "y"], timeout=10))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    assert await b.fail_variable(T, S, "y", "upstream_failed: z")
    states = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - t0 < 0.5
    assert states["y"].status == "failed" and states["y"].error == "upstream_failed: z"
    assert states["x"].status == "pending"
    assert not await b.fail_variable(T, S, "y", "again")


async def test_wait_timeout_returns_pending(store: SessionStore) -> None:
    await store.register_request(rec("r1", [], "x"))
    await store.put_variable(T, S, "other", "v")  # an unrelated event must not end the wait
    t0 = time.monotonic()
    states = await store.wait_variables(T, S, ["x", "never"], timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 1.0
    assert states["x"].status == "pending" and states["never"].status == "pending"
    ready = await store.wait_variables(T, S, ["other"], timeout=5)
    assert ready["other"].value == "v"


async def test_wait_many_waiters_no_lost_wakeup(
    replicas: Callable[..., asyncio.Future[Replica]],
) -> None:
    a, b = (await replicas()).store, (await replicas()).store
    a.recheck_s = 30.0
    names = [f"v{i}" for i in range(20)]
    for n in names:
        await a.register_request(rec(f"r-{n}", [], n))
    waits = [asyncio.create_task(a.wait_variables(T, S, [n], timeout=10)) for n in names]
    await asyncio.gather(*(b.set_result(T, S, n, n.upper()) for n in names))
    done = await asyncio.wait_for(asyncio.gather(*waits), 5)
    assert [d[n].value for d, n in zip(done, names)] == [n.upper() for n in names]


async def test_delete_wakes_waiters(replicas: Callable[..., asyncio.Future[Replica]]) -> None:
    a, b = (await replicas()).store, (await replicas()).store
    a.recheck_s = 30.0
    await a.register_request(rec("r1", [], "x"))
    waiting = asyncio.create_task(a.wait_variables(T, S, ["x"], timeout=10))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    assert await b.delete_session(T, S)
    states = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - t0 < 0.5
    assert states["x"].status == "failed" and states["x"].error == "session deleted"
    assert await a.list_variables(T, S) == [] and await a.list_requests(T, S) == []
    assert await meta_of(a, T, S) == {}


async def test_notifier_dispatch_filters_by_session_and_name(redis_url: str) -> None:
    n = Notifier(redis_url)  # not started: dispatch is local and synchronous
    with n.watch(T, S, ["x"]) as wx, n.watch(T, "other", None) as wo:
        n.dispatch(Event(T, S, "ready", "y"))
        assert not await wx.wait(0.01)
        n.dispatch(Event(T, S, "ready", "x"))
        assert await wx.wait(0.01) and not await wo.wait(0.01)
        wx.clear()
        n.dispatch(Event(T, "other", "deleted"))
        assert await wo.wait(0.01) and not await wx.wait(0.01)
    assert Event.decode(b"not json") is None
    assert Event.decode(Event("a:b", S, "failed", "x").encode()) == Event("a:b", S, "failed", "x")
    await n.stop()


def test_plan_register_is_pure() -> None:
    cur: dict[str, Variable | None] = {"o": Variable("o", consumers=["r0"]), "i": None}
    plan = plan_register(rec("r1", ["i"], "o"), cur, 1, 10, now=5.0)
    got = {v.name: v for v in plan.variables}
    assert got["o"].producer == "r1" and got["o"].consumers == ["r0"]
    assert got["i"].consumers == ["r1"] and got["i"].updated_at == 5.0
    assert cur["o"] is not None and cur["o"].producer is None  # input untouched


# -------------------------------------------------------------- Redis restart


async def test_redis_restart() -> None:
    with RedisServer(appendonly=True) as server:
        a = await Replica(server.url).start()
        b = await Replica(server.url, share_client=True).start()
        a.store.recheck_s = 30.0
        b.store.recheck_s = 0.05  # b's waiter re-reads (and fails to) during the outage
        tasks: list[asyncio.Task[object]] = []
        try:
            await a.store.register_request(rec("r1", [], "x"))
            await a.store.register_request(rec("r2", [], "y"))
            waiting = asyncio.create_task(a.store.wait_variables(T, S, ["x"], timeout=20))
            polling = asyncio.create_task(b.store.wait_variables(T, S, ["x"], timeout=20))
            tasks += [waiting, polling]
            await asyncio.sleep(0.1)

            server.stop()
            with pytest.raises(ServiceUnavailable):
                await b.store.get_variable(T, S, "x")
            with pytest.raises(ServiceUnavailable):
                await b.store.put_variable(T, S, "z", "v")
            with pytest.raises(ServiceUnavailable):
                await b.store.wait_variables(T, S, ["x"], timeout=1)
            await asyncio.sleep(0.2)
            assert not a.notifier.connected

            with a.notifier.watch(T, S, ["unrelated"]) as w:
                server.start()
                assert await a.notifier.wait_connected(5) and await b.notifier.wait_connected(5)
                assert a.notifier.reconnects >= 1
                assert await w.wait(1)  # everyone re-reads after a reconnect
            assert not waiting.done() and not polling.done()  # they rode out the outage
            await b.store.set_result(T, S, "x", "after")  # state survived (AOF)
            for task in (waiting, polling):
                assert (await asyncio.wait_for(task, 2))["x"].value == "after"

            # a fresh waiter after the restart also wakes via the notifier
            t0 = time.monotonic()
            waiting = asyncio.create_task(a.store.wait_variables(T, S, ["y"], timeout=20))
            tasks.append(waiting)
            await asyncio.sleep(0.1)
            await b.store.set_result(T, S, "y", "fine")
            assert (await asyncio.wait_for(waiting, 2))["y"].status == "ready"
            assert time.monotonic() - t0 < 0.6
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await a.close()
            await b.close()
