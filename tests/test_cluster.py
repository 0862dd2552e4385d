"""Redis Cluster: the semantic-variable core cases on a real 3-master cluster started from
the redis-server binary (gateway/redis_server.LocalCluster), through the gateway's
``redis+cluster://`` client; sessions spread over every master's slots."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import test_semantic as sem

from gateway.redis_server import LocalCluster
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(180)

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as c:
        yield c


def _flush(c: LocalCluster) -> None:
    for node in c.primaries():
        client = redis.Redis(host=c.host, port=node.port)
        client.flushall()
        client.close()


@pytest.fixture
def cstack(cluster: LocalCluster) -> Iterator[Stack]:
    _flush(cluster)
    s = start_stack(cluster.url, engines=2, time_scale=0.02, replicas=2)
    yield s
    s.stop()


def _node_of(cluster: LocalCluster, key: str) -> int:
    """The port of the master serving ``key``'s slot."""
    client = redis.Redis(host=cluster.host, port=cluster.nodes[0].port)
    try:
        slot = client.cluster("keyslot", key)
        for start, end, primary, *_ in client.cluster("slots"):
            if start <= slot <= end:
                return int(primary[1])
    finally:
        client.close()
    raise AssertionError(f"no node serves {key}")


def test_core_cases_on_a_cluster(cstack: Stack) -> None:
    """The single-Redis suite's core cases, unchanged, on the cluster."""
    sem.test_async_chain_reverse_order_matches_sequential(cstack)
    sem.test_map_reduce_runs_with_deduced_objective_and_one_task_group(cstack)
    sem.test_put_get_conflicts_and_errors(cstack)
    sem.test_sync_request_waits_for_inputs_and_streams(cstack)
    sem.test_delete_session_fails_pending(cstack)
    sem.test_deadline_fails_consumers(cstack)


def test_variables_cross_nodes_and_replicas(cluster: LocalCluster, cstack: Stack) -> None:
    """Sessions whose slots live on every master: each variable is written through one
    replica (its session's node) and awaited through the other replica."""
    g1, g2 = cstack.gateway, cstack.extra_gateways[0]
    assert g1 is not None
    sids = [f"x{i}" for i in range(12)]
    nodes = {_node_of(cluster, f"parrot:{{default:{sid}}}:vars") for sid in sids}
    assert len(nodes) == 3, nodes  # every master holds some of these sessions
    c1 = httpx.Client(base_url=g1.url, timeout=30)
    c2 = httpx.Client(base_url=g2.url, timeout=30)
    try:
        for sid in sids:  # the consumer is registered (and will run) on replica 2
            r = c2.post(CHAT, headers={"X-Parrot-Session": sid, "X-Parrot-Async": "1",
                                       "X-Parrot-Output": "y"},
                        json={"messages": [{"role": "user", "content": "echo {{x}}"}],
                              "max_tokens": 4})
            assert r.status_code == 200, r.text
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(12) as pool:
            polls = [pool.submit(lambda s=sid: c1.get(f"/v1/sessions/{s}/variables/y",
                                                      params={"wait": 20}).json())
                     for sid in sids]  # long polls on replica 1
            time.sleep(0.3)
            for sid in sids:  # the input is written through replica 1
                assert c1.put(f"/v1/sessions/{sid}/variables/x",
                              json={"value": f"v-{sid}"}).status_code == 200
            got = [p.result(timeout=30) for p in polls]
        assert all(v["status"] == "ready" and v["value"] for v in got), got
        for sid in sids:
            graph = c2.get(f"/v1/sessions/{sid}").json()
            assert [r["status"] for r in graph["requests"]] == ["done"]
    finally:
        c1.close()
        c2.close()


def test_limits_and_membership_on_a_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    _flush(cluster)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"k": {"tenant": "t", "rpm": 3, "max_sessions": 1}}}))
    s = start_stack(cluster.url, engines=1, time_scale=0.02, replicas=2, api_keys=str(keys),
                    replica_heartbeat_s=0.1, replica_ttl_s=1.0)
    try:
        g1, g2 = s.gateway, s.extra_gateways[0]
        assert g1 is not None
        h = {"Authorization": "Bearer k"}
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        codes = [httpx.post(g.url + CHAT, json=body, headers=h, timeout=30).status_code
                 for g in (g1, g2, g1, g2)]
        assert codes == [200, 200, 200, 429]  # one budget across replicas
        r = httpx.put(g1.url + "/v1/sessions/a/variables/x", json={"value": "1"}, headers=h)
        assert r.status_code == 429 or r.status_code == 200
        # both replicas see each other (membership is one key, on whichever node)
        gw1 = g1.server.config.app.state.gateway
        deadline = time.monotonic() + 5
        while len(gw1.membership.live) != 2:
            assert time.monotonic() < deadline, gw1.membership.live
            time.sleep(0.05)
    finally:
        s.stop()


# ------------------------------------------------------------------ failover


async def _session(client: httpx.AsyncClient, sid: str, codes: list[int]) -> str:
    """Submit a 2-step chain and wait for it, retrying 503s (the cluster is failing over)."""
    h = {"X-Parrot-Session": sid, "X-Parrot-Async": "1"}

    async def call(method: str, path: str, **kw: object) -> httpx.Response:
        for _ in range(200):
            try:
                r = await client.request(method, path, **kw)  # type: ignore[arg-type]
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            codes.append(r.status_code)
            if r.status_code != 503:
                return r
            assert r.json()["error"]["code"] == "service_unavailable"  # clear, OpenAI-shaped
            await asyncio.sleep(0.1)
        raise AssertionError("still 503 after 20 s")

    for out, content in (("a", "draft {{doc}}"), ("b", "improve {{a}}")):
        r = await call("POST", CHAT, headers={**h, "X-Parrot-Output": out},
                       json={"messages": [{"role": "user", "content": content}], "max_tokens": 8})
        assert r.status_code in (200, 409), r.text
    r = await call("PUT", f"/v1/sessions/{sid}/variables/doc", json={"value": f"doc of {sid}"})
    assert r.status_code in (200, 409), r.text
    for _ in range(30):
        r = await call("GET", f"/v1/sessions/{sid}/variables/b", params={"wait": 5})
        if r.status_code == 200 and r.json()["status"] != "pending":
            v = r.json()
            return str(v["status"]) if v["status"] == "ready" else f"failed: {v['error']}"
    return "pending"


def test_master_failover_under_load() -> None:
    _failover(40)


@pytest.mark.slow
def test_master_failover_under_200_sessions() -> None:
    _failover(200)


def _failover(sessions: int) -> None:
    """One master of a 3+3 cluster killed while sessions run: requests meanwhile get clear
    503s, and once a replica is promoted every session completes; variables that were
    ready before the kill keep their values."""
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        stack = start_stack(cluster.url, engines=2, time_scale=0.05)
        try:
            url = stack.url

            async def main() -> tuple[list[str], list[int], dict[str, str], dict[str, str], float]:
                codes: list[int] = []
                async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                    first = [f"pre-{i}" for i in range(10)]
                    assert set(await asyncio.gather(*(_session(c, s, codes) for s in first))) \
                        == {"ready"}
                    before = {s: (await c.get(f"/v1/sessions/{s}/variables/b")).json()["value"]
                              for s in first}
                    tasks = [asyncio.create_task(_session(c, f"f-{i}", codes))
                             for i in range(sessions)]
                    await asyncio.sleep(0.5)
                    victim = cluster.primaries()[0]
                    victim.stop()  # SIGTERM-free: terminate; no time to hand slots over
                    t_kill = time.monotonic()
                    states = await asyncio.gather(*tasks)
                    recovered = time.monotonic() - t_kill
                    after = {s: (await c.get(f"/v1/sessions/{s}/variables/b")).json()["value"]
                             for s in first}
                return states, codes, before, after, recovered

            states, codes, before, after, recovered = asyncio.run(main())
            print(f"\nfailover: {len(states)} sessions {dict((s, states.count(s)) for s in set(states))}"
                  f"; 503s meanwhile: {codes.count(503)}; all done {recovered:.1f}s after the kill")
            assert states == ["ready"] * sessions, [s for s in states if s != "ready"]
            assert after == before
            assert not [c for c in codes if c >= 500 and c != 503]  # no 500s, no 502s
        finally:
            stack.stop()
