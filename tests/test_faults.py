"""Faults: an engine process killed under load, Redis stopped and restarted mid-run, and
clients that disconnect. Every accepted request is answered or failed with a reason."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from common.serving import UvicornThread
from gateway.embedded import start_sim_engines
from gateway.redis_server import RedisServer
from gateway.testing import start_engine, start_gateway

pytestmark = pytest.mark.timeout(180)

CHAT = "/v1/chat/completions"


def engine_load(url: str) -> int:
    loads = httpx.get(url + "/get_load", timeout=5).json()  # one entry per dp rank
    return sum(int(x["num_reqs"]) for x in (loads if isinstance(loads, list) else [loads]))


def wait_until(pred: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


def is_openai_error(r: httpx.Response) -> bool:
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(err) == {"message", "type", "param", "code"} and bool(err["message"])


# -- engine killed mid-run ---------------------------------------------------------------


async def _one(client: httpx.AsyncClient, i: int, stream: bool) -> tuple[str, int, str]:
    """('ok'|'failed', status, reason) for one request; raises only on a hang/transport bug."""
    body = {"messages": [{"role": "user", "content": f"question {i} " + "word " * (i % 40)}],
            "max_tokens": 40 + i % 40, "stream": stream}
    if not stream:
        r = await client.post(CHAT, json=body)
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"]
            return "ok", 200, ""
        assert r.status_code >= 500 and is_openai_error(r), r.text
        return "failed", r.status_code, r.json()["error"]["code"]
    async with client.stream("POST", CHAT, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            assert r.status_code >= 500 and is_openai_error(r), r.text
            return "failed", r.status_code, r.json()["error"]["code"]
        text, error, done = "", None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"]
                assert error["message"]
            else:
                for c in chunk["choices"]:
                    text += (c.get("delta") or {}).get("content") or ""
        assert done, "stream ended without [DONE]"
        if error is not None:
            return "failed", 200, error["code"] or "stream_error"
        assert text
        return "ok", 200, ""


async def _session(client: httpx.AsyncClient, i: int) -> tuple[str, str]:
    """A 2-step chain submitted async; returns the consumer's final status and error."""
    sid = f"kill-{i}"
    h = {"X-Parrot-Session": sid, "X-Parrot-Async": "1"}
    r = await client.post(CHAT, headers={**h, "X-Parrot-Output": "a"},
                          json={"messages": [{"role": "user", "content": f"draft {i}"}],
                                "max_tokens": 60})
    assert r.status_code == 200, r.text
    r = await client.post(CHAT, headers={**h, "X-Parrot-Output": "b"},
                          json={"messages": [{"role": "user", "content": "improve {{a}}"}],
                                "max_tokens": 30})
    assert r.status_code == 200, r.text
    for _ in range(10):
        v = (await client.get(f"/v1/sessions/{sid}/variables/b?wait=20")).json()
        if v["status"] != "pending":
            break
    a = (await client.get(f"/v1/sessions/{sid}/variables/a")).json()
    if v["status"] == "failed":  # a consumer fails upstream only if its producer failed
        assert "upstream_failed" not in (v["error"] or "") or a["status"] == "failed"
    return v["status"], v["error"] or ""


def test_engine_killed_under_200_concurrent_requests(redis_url: str) -> None:
    sims = start_sim_engines(2, profile="h100-llama3-8b", time_scale=0.3)
    gw = start_gateway(redis_url, sims.urls, health_interval_s=0.2, retry_budget=2)
    try:
        async def main() -> tuple[list[tuple[str, int, str]], list[tuple[str, str]], float]:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=gw.url, timeout=90, limits=limits) as client:
                plain = [asyncio.ensure_future(_one(client, i, stream=i % 5 == 0))
                         for i in range(200)]
                chains = [asyncio.ensure_future(_session(client, i)) for i in range(20)]
                await asyncio.sleep(0.6)
                t_kill = time.monotonic()
                sims.procs[0].kill()
                res = await asyncio.wait_for(asyncio.gather(*plain), 120)
                ses = await asyncio.wait_for(asyncio.gather(*chains), 120)
                return res, ses, time.monotonic() - t_kill

        results, sessions, after = asyncio.run(main())
        tally = collections.Counter((kind, status, reason) for kind, status, reason in results)
        print(f"\nengine kill: {dict(tally)}; sessions: {collections.Counter(s for s, _ in sessions)};"
              f" all answered {after:.1f}s after the kill")
        assert len(results) == 200  # every request accounted for
        ok = sum(1 for k, _, _ in results if k == "ok")
        # non-streaming requests and streams that had not started are retried elsewhere;
        # only streams that already sent tokens may fail (40 of them are streams)
        assert ok >= 160, tally
        assert all(k == "ok" for (k, _, _), i in zip(results, range(200)) if i % 5), tally
        assert sum(1 for s, _ in sessions if s == "ready") >= 18, sessions
        assert not httpx.get(gw.url + "/ready").json()["problems"]  # one engine is enough
    finally:
        gw.stop()
        sims.stop()


# -- Redis stopped and restarted mid-run --------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True, data_dir=str(tmp_path)).start()
    yield server
    server.cleanup()


def test_redis_outage_and_restart(own_redis: RedisServer, tmp_path: Any) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"k": {"tenant": "t", "rpm": 10000}}}))
    engine = start_engine(time_scale=0.02)
    gw = start_gateway(own_redis.url, [engine.url], api_keys=str(keys))
    c = httpx.Client(base_url=gw.url, headers={"Authorization": "Bearer k"}, timeout=15)
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    try:
        assert c.put("/v1/sessions/s/variables/x", json={"value": "before"}).status_code == 200
        r = c.post(CHAT, headers={"X-Parrot-Session": "s", "X-Parrot-Output": "y"}, json={
            "messages": [{"role": "user", "content": "use {{x}}"}], "max_tokens": 5})
        assert r.status_code == 200
        y_before = c.get("/v1/sessions/s/variables/y").json()["value"]
        assert y_before

        own_redis.stop()
        # session operations: a clear 503 with an OpenAI body, fast
        for method, path, body, headers in [
            ("PUT", "/v1/sessions/s/variables/z", {"value": "1"}, {}),
            ("GET", "/v1/sessions/s/variables/x", None, {}),
            ("GET", "/v1/sessions/s/variables/x?wait=2", None, {}),
            ("GET", "/v1/sessions/s", None, {}),
            ("DELETE", "/v1/sessions/s", None, {}),
            ("POST", CHAT, chat, {"X-Parrot-Session": "s2", "X-Parrot-Output": "o"}),
            ("POST", CHAT, chat, {"X-Parrot-Session": "s2", "X-Parrot-Async": "1",
                                  "X-Parrot-Output": "p"}),
        ]:
            t0 = time.monotonic()
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert is_openai_error(r) and r.json()["error"]["code"] == "service_unavailable"
            assert time.monotonic() - t0 < 5
        # plain proxying keeps working (the rate limiter fails open)
        for stream in (False, True):
            r = c.post(CHAT, json={**chat, "stream": stream})
            assert r.status_code == 200, r.text
        assert c.get("/ready").status_code == 503

        own_redis.start()  # same port, same AOF directory
        assert wait_until(lambda: c.get("/v1/sessions/s/variables/x").status_code == 200, 10)
        assert c.get("/ready").status_code == 200
        # no wrong values: what was written is intact, and still written once
        assert c.get("/v1/sessions/s/variables/x").json() == {
            "name": "x", "status": "ready", "value": "before", "error": None}
        assert c.get("/v1/sessions/s/variables/y").json()["value"] == y_before
        assert c.put("/v1/sessions/s/variables/x", json={"value": "other"}).status_code == 409
        assert c.get("/v1/sessions/s/variables/z").status_code == 404  # the refused write left nothing
        # new work and notifications flow again (the notifier resubscribed)
        r = c.post(CHAT, headers={"X-Parrot-Session": "s", "X-Parrot-Async": "1",
                                  "X-Parrot-Output": "w"},
                   json={"messages": [{"role": "user", "content": "again {{later}}"}],
                         "max_tokens": 3})
        assert r.status_code == 200
        assert c.put("/v1/sessions/s/variables/later", json={"value": "now"}).status_code == 200
        t0 = time.monotonic()
        w = c.get("/v1/sessions/s/variables/w?wait=10").json()
        assert w["status"] == "ready" and w["value"], w
        assert time.monotonic() - t0 < 5
    finally:
        gw.stop()
        engine.stop()


# -- client disconnects ---------------------------------------------------------------------


@pytest.fixture
def slow() -> Iterator[tuple[UvicornThread, UvicornThread, str]]:
    redis = RedisServer().start()
    engine = start_engine(time_scale=1.0)  # real-time: 1500 tokens take ~10 s
    gw = start_gateway(redis.url, [engine.url])
    yield gw, engine, redis.url
    gw.stop()
    engine.stop()
    redis.cleanup()


LONG = {"messages": [{"role": "user", "content": "write a long story"}], "max_tokens": 1500}


def test_disconnects_abort_engine_work(slow: tuple[UvicornThread, UvicornThread, str]) -> None:
    gw, engine, _ = slow
    # streaming: closing the response closes the engine stream
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        with c.stream("POST", CHAT, json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # keep the iterator: dropping it closes the response
            next(lines)
            assert wait_until(lambda: engine_load(engine.url) == 1, 3)
    assert wait_until(lambda: engine_load(engine.url) == 0, 3), "stream not aborted"

    # semantic stream whose output nobody consumes: closing it aborts the engine call too
    # (not seconds later, when garbage collection would finalize the abandoned generators)
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        with c.stream("POST", CHAT, json={**LONG, "stream": True},
                      headers={"X-Parrot-Session": "d0"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)
            assert wait_until(lambda: engine_load(engine.url) == 1, 3)
    assert wait_until(lambda: engine_load(engine.url) == 0, 3), "semantic stream not aborted"

    # non-streaming: the client gives up; the gateway notices and cancels the engine call
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + CHAT, json=LONG, timeout=0.5)
    assert wait_until(lambda: engine_load(engine.url) == 0, 3), "non-stream call not aborted"

    # semantic sync request whose output nobody consumes: aborted too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + CHAT, json=LONG, timeout=0.5,
                   headers={"X-Parrot-Session": "d1", "X-Parrot-Output": "unused"})
    assert wait_until(lambda: engine_load(engine.url) == 0, 3), "unneeded semantic call not aborted"
    v = httpx.get(gw.url + "/v1/sessions/d1/variables/unused").json()
    assert v["status"] == "failed" and "cancel" in v["error"]


def test_disconnect_keeps_work_that_others_need(slow: tuple[UvicornThread, UvicornThread, str]) -> None:
    gw, engine, _ = slow
    c = httpx.Client(base_url=gw.url, timeout=30)
    body = {**LONG, "max_tokens": 300}  # ~2 s
    # the consumer is registered first (async), so the producer's output is needed
    r = c.post(CHAT, headers={"X-Parrot-Session": "d2", "X-Parrot-Async": "1",
                              "X-Parrot-Output": "final"},
               json={"messages": [{"role": "user", "content": "shorten {{draft}}"}], "max_tokens": 5})
    assert r.status_code == 200
    for stream in (False, True):
        name = f"draft{int(stream)}" if stream else "draft"
        if stream:
            c.post(CHAT, headers={"X-Parrot-Session": "d2", "X-Parrot-Async": "1",
                                  "X-Parrot-Output": "final1"},
                   json={"messages": [{"role": "user", "content": "{{draft1}}"}], "max_tokens": 5})
            with c.stream("POST", CHAT, json={**body, "stream": True},
                          headers={"X-Parrot-Session": "d2", "X-Parrot-Output": name}) as s:
                next(s.iter_lines())
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post(CHAT, json=body, timeout=0.5,
                       headers={"X-Parrot-Session": "d2", "X-Parrot-Output": name})
        time.sleep(0.3)
        assert engine_load(engine.url) >= 1  # still running for its consumer
        out = c.get(f"/v1/sessions/d2/variables/{name}?wait=20").json()
        assert out["status"] == "ready" and out["value"], out
    for final in ("final", "final1"):
        assert c.get(f"/v1/sessions/d2/variables/{final}?wait=20").json()["status"] == "ready"


def test_result_finished_during_redis_outage_is_kept(own_redis: RedisServer) -> None:
    """An engine finishes while Redis is down: the gateway keeps retrying the write, so
    the variable ends ready (not pending forever, not failed) once Redis is back."""
    engine = start_engine(time_scale=1.0)
    gw = start_gateway(own_redis.url, [engine.url])
    c = httpx.Client(base_url=gw.url, timeout=30)
    try:
        h = {"X-Parrot-Session": "out1", "X-Parrot-Output": "x", "X-Parrot-Async": "1"}
        r = c.post(CHAT, headers=h, json={"messages": [{"role": "user", "content": "long"}],
                                          "max_tokens": 500, "ignore_eos": True})
        assert r.status_code == 200
        time.sleep(1.2)                 # registered and fsynced (AOF everysec)
        own_redis.stop()                # the engine (~3 s of decode) finishes during the outage
        time.sleep(4.5)
        own_redis.start()
        deadline = time.monotonic() + 30
        while True:
            v = c.get("/v1/sessions/out1/variables/x", params={"wait": 5})
            if v.status_code == 200 and v.json()["status"] != "pending":
                break
            assert time.monotonic() < deadline, v.text
        assert v.json()["status"] == "ready" and v.json()["value"]
        graph = c.get("/v1/sessions/out1").json()
        assert graph["requests"][0]["status"] == "done"
    finally:
        c.close()
        gw.stop()
        engine.stop()
