"""What the session path hands the scheduling policy: remaining downstream work per request,
task groups that stay stable while siblings register (and move queued producers into
their group when the consumer comes late), and one application start for every replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.completion import RequestContext
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(90)

CHAT = "/v1/chat/completions"


def gateway_of(server: Any) -> Any:
    return server.server.config.app.state.gateway


def spy_contexts(gw: Any) -> list[RequestContext]:
    """Every context the session runner hands to the engines (a copy when queued)."""
    seen: list[RequestContext] = []
    job = gw.completions.job

    def record(route: Any, body: Any, ctx: RequestContext, avoid: Any) -> Any:
        seen.append(RequestContext(**ctx.__dict__))
        return job(route, body, ctx, avoid)

    gw.completions.job = record
    return seen


def post(url: str, session: str, output: str, content: str, max_tokens: int = 4) -> str:
    r = httpx.post(url + CHAT, timeout=30, headers={
        "X-Parrot-Session": session, "X-Parrot-Async": "1", "X-Parrot-Output": output},
        json={"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
              "ignore_eos": True})
    assert r.status_code == 200, r.text
    return str(r.json()["parrot"]["request_id"])


def wait_ready(url: str, session: str, name: str) -> None:
    v = httpx.get(f"{url}/v1/sessions/{session}/variables/{name}", params={"wait": 20},
                  timeout=30).json()
    assert v["status"] == "ready", v


@pytest.fixture
def two(redis_url: str) -> Iterator[Stack]:
    # Forwarding off: each request runs where it is sent, so the replicas must agree
    # through Redis alone (as while a session's owner cannot be reached).
    s = start_stack(redis_url, engines=1, time_scale=0.02, replicas=2, forward_sessions=False)
    yield s
    s.stop()


def test_downstream_work_and_one_application_start_across_replicas(two: Stack) -> None:
    g1, g2 = two.gateway, two.extra_gateways[0]
    assert g1 is not None
    seen = spy_contexts(gateway_of(g1))
    seen2 = spy_contexts(gateway_of(g2))
    # a -> b -> c, registered on alternating replicas; b and c wait for their inputs
    ids = {"c": post(g1.url, "ds", "c", "finish {{b}}"),
           "b": post(g2.url, "ds", "b", "continue {{a}}")}
    time.sleep(0.2)  # the application has been running for a while when a arrives
    ids["a"] = post(g1.url, "ds", "a", "start {{doc}}")
    assert httpx.put(g2.url + "/v1/sessions/ds/variables/doc", json={"value": "x"}).status_code == 200
    wait_ready(g1.url, "ds", "c")
    ctxs = {c.request_id: c for c in [*seen, *seen2]}
    assert set(ctxs) == set(ids.values()), ctxs
    a, b, c = (ctxs[ids[k]] for k in "abc")
    # remaining critical-path work after each request: a > b > c = 0
    assert a.downstream_s > b.downstream_s > c.downstream_s == 0.0
    # the application started when its first request registered, the same for everyone
    assert a.app_started == b.app_started == c.app_started
    assert a.app_started is not None and a.app_started < time.time()


def test_late_consumer_moves_queued_producers_into_its_group(redis_url: str) -> None:
    """Producers queued before their consumer registers get the consumer's task group
    (``grp:<consumer>``), through the dispatcher, on the replica that queued them."""
    s = start_stack(redis_url, engines=1, time_scale=1.0, max_inflight_per_engine=1)
    try:
        gw = gateway_of(s.gateway)
        moved: list[tuple[str, str | None]] = []
        set_group = gw.dispatcher.set_group

        def spy(request_id: str, group: str | None) -> None:
            moved.append((request_id, group))
            set_group(request_id, group)

        gw.dispatcher.set_group = spy
        # a long request holds the only slot, so the producers below stay queued
        blocker = post(s.url, "lg", "blocker", "write at length", max_tokens=600)
        p1 = post(s.url, "lg", "p1", "part one")
        p2 = post(s.url, "lg", "p2", "part two")
        time.sleep(0.3)
        assert {p1, p2} <= set(gw.sessions._queued.get(("default", "lg"), {}))  # waiting
        consumer = post(s.url, "lg", "joined", "join {{p1}} and {{p2}}")
        deadline = time.monotonic() + 5
        while len({rid for rid, _ in moved} & {p1, p2}) < 2:
            assert time.monotonic() < deadline, moved
            time.sleep(0.02)
        assert {(p1, f"grp:{consumer}"), (p2, f"grp:{consumer}")} <= set(moved)
        assert all(group is None for rid, group in moved if rid == blocker)  # no one's producer
    finally:
        s.stop()


def test_a_map_sees_siblings_registered_on_the_other_replica(two: Stack) -> None:
    """The reduce and the first map register on replica 1, the other maps on replica 2
    (as when a replica becomes the session's owner mid-way); replica 1 writes the maps'
    input, so its waiting map learns the value without a Redis read. It must still be
    analysed on the whole graph: one task group for every map (it ran alone, with no
    group, while replica 1 trusted its own stale copy of the graph)."""
    g1, g2 = two.gateway, two.extra_gateways[0]
    assert g1 is not None
    post(g1.url, "split", "final", "sum " + " ".join("{{m%d}}" % i for i in range(6)))
    post(g1.url, "split", "m0", "map 0 of {{doc}}")
    for i in range(1, 6):
        post(g2.url, "split", f"m{i}", f"map {i} of {{{{doc}}}}")
    assert httpx.put(g1.url + "/v1/sessions/split/variables/doc", json={"value": "x"}).status_code == 200
    wait_ready(g1.url, "split", "final")
    reqs = {r["output"]: r for r in httpx.get(g1.url + "/v1/sessions/split").json()["requests"]}
    groups = {reqs[f"m{i}"]["group_effective"] for i in range(6)}
    assert len(groups) == 1 and None not in groups, groups
