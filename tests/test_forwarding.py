"""A session's requests run on the replica that owns the session, whichever replica the
balancer picked: rendezvous ownership (pure), URL publication (real Redis), and relaying
between two real gateway replicas on loopback, with its failures (an owner that cannot be
reached, a client that leaves mid-stream)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from common.serving import UvicornThread, free_port
from gateway.ownership import owner
from gateway.replicas import Membership
from gateway.testing import start_engine, start_gateway

pytestmark = pytest.mark.timeout(90)

FAST = {"replica_heartbeat_s": 0.2, "replica_ttl_s": 1.0, "health_interval_s": 0.3}
replica_ids = st.lists(st.text("abcdef0123456789-", min_size=1, max_size=12), min_size=1,
                       max_size=8, unique=True)


# ------------------------------------------------------------------ ownership (pure)

@given(replica_ids, st.text(max_size=40))
def test_every_replica_computes_the_same_owner_whatever_the_order(replicas: list[str],
                                                                  session: str) -> None:
    assert owner(session, replicas) == owner(session, sorted(replicas)) == owner(
        session, reversed(replicas))
    assert owner(session, replicas) in replicas


@given(replica_ids.filter(lambda r: len(r) >= 2), st.data())
def test_a_replica_leaving_moves_only_the_sessions_it_owned(replicas: list[str],
                                                             data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(replicas))
    rest = [r for r in replicas if r != gone]
    for i in range(200):
        before = owner(f"s{i}", replicas)
        if before != gone:
            assert owner(f"s{i}", rest) == before


def test_sessions_spread_evenly_and_none_without_replicas() -> None:
    counts = Counter(owner(f"session-{i}", ["gw-a", "gw-b", "gw-c", "gw-d"]) for i in range(8000))
    assert all(1800 <= n <= 2200 for n in counts.values()), counts
    assert owner("s", []) is None


# ------------------------------------------------------------------ membership URLs (Redis)

async def test_a_withdrawn_replica_stops_being_a_target_on_its_peers_next_beat(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    a = Membership(r, replica_id="gw-a", url="http://10.0.0.1:8000")
    b = Membership(r, replica_id="gw-b", url="http://10.0.0.2:8000")
    quiet = Membership(r, replica_id="gw-c")  # no URL: alive, takes no relayed work
    try:
        for m in (a, b, quiet, a):
            await m.beat()
        assert a.targets == ["gw-a", "gw-b"]
        assert a.urls["gw-b"] == "http://10.0.0.2:8000"
        await b.withdraw()
        await b.beat()  # a beat after withdrawing does not publish it again
        await a.beat()
        assert a.targets == ["gw-a"] and b.live == ["gw-a", "gw-b", "gw-c"]
        await r.delete(a.urls_key)  # Redis restarted empty: the next beat writes it back
        await a.beat()
        assert a.targets == ["gw-a"]
    finally:
        await r.aclose()


# ------------------------------------------------------------------ two real replicas

def _gateway(t: UvicornThread):  # noqa: ANN202 - the app's Gateway
    return t.server.config.app.state.gateway


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_targets(gws: list[UvicornThread], n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(_gateway(g).membership.targets) != n for g in gws):
        assert time.monotonic() < deadline, [_gateway(g).membership.targets for g in gws]
        time.sleep(0.05)


def _session_owned_by(replica: str, targets: list[str]) -> str:
    return next(s for s in (f"sess-{i}" for i in range(1000)) if owner(s, targets) == replica)


def _served(url: str) -> float:
    return _metric(url, "parrot_requests_total", route="/v1/chat/completions", status="200")


def test_a_sessions_requests_run_on_its_owner_whichever_replica_gets_them(redis_url: str) -> None:
    engine = start_engine(time_scale=0.02)
    a, b = (start_gateway(redis_url, [engine.url], **FAST) for _ in range(2))
    try:
        _wait_targets([a, b], 2)
        targets = _gateway(a).membership.targets
        on_b = _session_owned_by(_gateway(b).membership.id, targets)
        on_a = _session_owned_by(_gateway(a).membership.id, targets)
        client = openai.OpenAI(base_url=a.url + "/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "name three rivers"}]
        plain = client.chat.completions.create(model="", messages=messages, max_tokens=8,
                                               extra_headers={"X-Parrot-Session": on_b})
        assert plain.choices[0].message.content and plain.usage.completion_tokens == 8
        stream = client.chat.completions.create(model="", messages=messages, max_tokens=8,
                                                stream=True, extra_headers={"X-Parrot-Session": on_b})
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
        local = client.chat.completions.create(model="", messages=messages, max_tokens=4,
                                               extra_headers={"X-Parrot-Session": on_a})
        assert local.choices[0].message.content
        client.chat.completions.create(model="", messages=messages, max_tokens=4)  # no session
        assert _metric(a.url, "parrot_forwarded_requests_total", outcome="forwarded") == 2
        assert _served(b.url) == 2  # both of on_b's, relayed by a
        assert _served(a.url) == 2  # on_a's and the one without a session
        # Bad input relayed: the owner's OpenAI-shaped error comes back as it is.
        bad = httpx.post(a.url + "/v1/chat/completions", json={"messages": "nope"},
                         headers={"X-Parrot-Session": on_b}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert "x-request-id" in bad.headers
    finally:
        a.stop()
        b.stop()
        engine.stop()


def test_an_owner_that_cannot_be_reached_costs_the_hop_not_the_request(redis_url: str) -> None:
    engine = start_engine(time_scale=0.02)
    # Heartbeats far apart: the live set stays as the test sets it.
    a = start_gateway(redis_url, [engine.url], replica_heartbeat_s=30, replica_ttl_s=60)
    try:
        m = _gateway(a).membership
        m.urls = {**m.urls, "gw-gone": f"http://127.0.0.1:{free_port()}"}  # nothing listens
        m.live = sorted([m.id, "gw-gone"])
        session = _session_owned_by("gw-gone", m.targets)
        r = httpx.post(a.url + "/v1/chat/completions", timeout=10, headers={"X-Parrot-Session": session},
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
        assert _metric(a.url, "parrot_forwarded_requests_total", outcome="owner_unreachable") == 1
        assert _served(a.url) == 1
    finally:
        a.stop()
        engine.stop()


def test_a_client_leaving_a_relayed_stream_stops_it_on_the_owner(redis_url: str) -> None:
    engine = start_engine(time_scale=1.0)  # real decode pace: ~2,000 tokens take seconds
    a, b = (start_gateway(redis_url, [engine.url], **FAST) for _ in range(2))
    try:
        _wait_targets([a, b], 2)
        session = _session_owned_by(_gateway(b).membership.id, _gateway(a).membership.targets)

        async def leave_early() -> None:
            async with httpx.AsyncClient(timeout=30) as c:
                body = {"messages": [{"role": "user", "content": "write a long story"}],
                        "max_tokens": 2000, "stream": True}
                async with c.stream("POST", a.url + "/v1/chat/completions", json=body,
                                    headers={"X-Parrot-Session": session}) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            break  # first token: leave

        asyncio.run(leave_early())
        deadline = time.monotonic() + 5
        while httpx.get(engine.url + "/get_load").json()[0]["num_reqs"]:
            assert time.monotonic() < deadline, "the owner kept generating for a client that left"
            time.sleep(0.05)
        assert _metric(a.url, "parrot_forwarded_requests_total", outcome="client_gone") == 1
    finally:
        a.stop()
        b.stop()
        engine.stop()
