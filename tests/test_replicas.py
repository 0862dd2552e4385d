"""Replica membership (gateway/replicas.py) and adoption of a dead replica's accepted work
(gateway/work.py), against a real redis-server; gateways in-process on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.ownership import owner
from gateway.replicas import Membership
from gateway.testing import start_engine, start_gateway

pytestmark = pytest.mark.timeout(90)

CHAT = "/v1/chat/completions"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


async def until(pred: object, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(every)
    return bool(pred())  # type: ignore[operator]


async def test_membership_live_set_shares_and_death(client: aioredis.Redis) -> None:
    shares: list[float] = []
    dead_seen: list[str] = []
    a = Membership(client, heartbeat_s=0.1, ttl_s=0.6)
    b = Membership(client, heartbeat_s=0.1, ttl_s=0.6)
    a.on_change.append(lambda live: shares.append(1 / len(live)))

    async def on_dead(replica: str) -> None:
        dead_seen.append(replica)
        await a.forget(replica)

    a.on_dead.append(on_dead)
    await a.start()
    await b.start()
    try:
        assert await until(lambda: a.live == sorted([a.id, b.id]), 2)
        assert shares[-1] == 0.5 and a.share == 0.5
        # b dies without a word: its lease runs out, a sees it dead, adopts, forgets it
        await b.stop(leave=False)
        t0 = time.monotonic()
        assert await until(lambda: a.live == [a.id], 3)
        assert time.monotonic() - t0 < 0.6 + 0.5
        assert shares[-1] == 1.0
        assert await until(lambda: dead_seen == [b.id], 3)
        assert await until(lambda: not a.dead, 2)
        assert await client.zscore(a.key, b.id) is None  # forgotten
        # a replica that comes back keeps its place (forget only drops an expired lease)
        await b.start()
        assert not await a.forget(b.id)
        assert await until(lambda: a.live == sorted([a.id, b.id]), 2)
    finally:
        await a.stop()
        await b.stop()


async def test_membership_leave_is_seen_at_once(client: aioredis.Redis) -> None:
    a = Membership(client, heartbeat_s=0.1, ttl_s=5.0)
    b = Membership(client, heartbeat_s=0.1, ttl_s=5.0)
    await a.start()
    await b.start()
    try:
        assert await until(lambda: len(a.live) == 2, 2)
        await b.stop(leave=True, forget=True)  # a clean exit: gone, not merely expired
        assert await until(lambda: a.live == [a.id], 1)
        assert await client.zscore(a.key, b.id) is None
    finally:
        await a.stop()


async def test_lapsed_lease_is_noticed(client: aioredis.Redis) -> None:
    lapsed: list[bool] = []
    a = Membership(client, heartbeat_s=0.05, ttl_s=0.2)

    async def on_expired() -> None:
        lapsed.append(True)

    a.on_expired.append(on_expired)
    await a.beat()
    await a.beat()
    assert not lapsed
    await asyncio.sleep(0.3)  # a pause longer than the lease (GC, partition, SIGSTOP)
    await a.beat()
    await asyncio.sleep(0.01)
    assert lapsed == [True]
    await a.stop()


def test_sigkilled_replica_drops_out(redis_url: str) -> None:
    """A replica process killed with SIGKILL leaves the live set within its TTL."""
    code = textwrap.dedent(f"""
        import asyncio, redis.asyncio as r
        from gateway.replicas import Membership
        async def main():
            m = Membership(r.from_url({redis_url!r}), replica_id="victim", heartbeat_s=0.1,
                           ttl_s=1.0)
            await m.start()
            print("up", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)

    async def main() -> float:
        c = aioredis.from_url(redis_url)
        watcher = Membership(c, heartbeat_s=0.1, ttl_s=1.0)
        try:
            await watcher.start()
            assert await until(lambda: "victim" in watcher.live, 10)
            proc.kill()
            t0 = time.monotonic()
            assert await until(lambda: "victim" not in watcher.live, 5)
            return time.monotonic() - t0
        finally:
            await watcher.stop()
            await c.aclose()

    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        gone_after = asyncio.run(main())
        print(f"\nSIGKILLed replica left the live set {gone_after:.2f}s after the kill (TTL 1 s)")
        assert gone_after < 2.5
    finally:
        proc.kill()
        proc.wait()


def test_dead_replicas_work_is_adopted_and_run(redis_url: str) -> None:
    """Replica A accepts async work waiting on an input, then dies (its lease lapses, its
    tasks stop without settling anything): B adopts the work and runs it once the input
    arrives; nothing is lost, nothing runs twice to a different value."""
    engine = start_engine(time_scale=0.02)
    fast = {"replica_heartbeat_s": 0.1, "replica_ttl_s": 0.8}
    a = start_gateway(redis_url, [engine.url], **fast)
    b = start_gateway(redis_url, [engine.url], **fast)
    try:
        gw_a = a.server.config.app.state.gateway
        deadline = time.monotonic() + 5
        while len(gw_a.membership.targets) < 2:  # A sees B: pick a session A owns
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sid = next(s for s in (f"adopt{i}" for i in range(100))
                   if owner(s, gw_a.membership.targets) == gw_a.membership.id)
        h = {"X-Parrot-Session": sid, "X-Parrot-Async": "1"}
        with httpx.Client(base_url=a.url, timeout=10) as ca:
            for i in range(3):
                r = ca.post(CHAT, headers={**h, "X-Parrot-Output": f"m{i}"}, json={
                    "messages": [{"role": "user", "content": f"part {i} of {{{{doc}}}}"}],
                    "max_tokens": 4})
                assert r.status_code == 200, r.text
            r = ca.post(CHAT, headers={**h, "X-Parrot-Output": "final"}, json={
                "messages": [{"role": "user", "content": "join {{m0}} {{m1}} {{m2}}"}],
                "max_tokens": 4})
            assert r.status_code == 200
        assert len(gw_a.sessions._work) == 4  # all waiting on doc, owned by A

        async def die() -> None:  # what SIGKILL leaves behind: tasks gone, nothing settled
            gw_a.sessions._hand_over(list(gw_a.sessions._work))
            await gw_a.membership.stop(leave=False)

        assert a.loop is not None
        asyncio.run_coroutine_threadsafe(die(), a.loop).result(5)
        t_dead = time.monotonic()
        with httpx.Client(base_url=b.url, timeout=30) as cb:
            # B's metrics show the adoption within the TTL plus a heartbeat or two
            while "parrot_adopted_requests_total 4.0" not in cb.get("/metrics").text:
                assert time.monotonic() - t_dead < 5, "not adopted"
                time.sleep(0.05)
            adopted_after = time.monotonic() - t_dead
            assert cb.put(f"/v1/sessions/{sid}/variables/doc", json={"value": "text"}).status_code == 200
            final = cb.get(f"/v1/sessions/{sid}/variables/final", params={"wait": 20}).json()
            assert final["status"] == "ready" and final["value"], final
            graph = cb.get(f"/v1/sessions/{sid}").json()
        print(f"\nadopted 4 requests {adopted_after:.2f}s after the lease stopped (TTL 0.8 s)")
        assert all(r["status"] == "done" for r in graph["requests"])
        assert all(v["status"] == "ready" for v in graph["variables"])
        assert len(graph["requests"]) == 4  # re-run in place, not registered again
    finally:
        a.stop()
        b.stop()
        engine.stop()
