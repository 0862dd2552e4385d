"""Limits: 413 for sizes and counts, 429 with Retry-After for per-tenant rates and sessions,
counted in Redis so they hold across two gateway replicas."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.limits import Charge, correction, judge, requested_tokens, window_of
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

MSG = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def keys_file(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> str:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_429(r: httpx.Response, code: str = "rate_limit_exceeded") -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 3600


# -- pure ------------------------------------------------------------------------------


def test_window_and_judge() -> None:
    assert window_of(120.0) == (2, 60.0)
    assert window_of(170.5) == (2, 9.5)
    assert judge(3, 3, 0.0).allowed
    assert judge(None, 1, 0.0).allowed  # store down: fail open
    d = judge(4, 3, 130.0)
    assert not d.allowed and d.retry_after_s == 50.0


def test_requested_tokens_counts_prompt_and_choices() -> None:
    assert requested_tokens({"messages": [{"role": "user", "content": "x" * 400}],
                             "max_tokens": 10}) == 110
    assert requested_tokens({"prompt": "abcd", "max_tokens": 5, "n": 3}) == 1 + 15
    assert requested_tokens({"prompt": "", "max_tokens": True}) == 256  # bool is not a count


def test_tpm_correction_is_pure() -> None:
    c = Charge("t", window=2, tokens=100)
    assert correction(c, 130, now=125.0) == (2, 30)  # same window: the difference
    assert correction(c, 60, now=125.0) == (2, -40)  # an over-estimate is refunded
    assert correction(c, 100, now=125.0) is None
    assert correction(c, 130, now=185.0) == (3, 30)  # later: an excess to the current window
    assert correction(c, 60, now=185.0) is None  # and no refund into a window it never hit


# -- sizes and counts (413) -------------------------------------------------------------


@pytest.fixture
def small(redis_url: str) -> Iterator[Stack]:
    s = start_stack(
        redis_url, engines=1, max_messages=3, max_placeholders=2, max_variables_per_session=2,
        max_value_bytes=64, max_body_bytes=4096,
    )
    yield s
    s.stop()


def test_size_and_count_limits_are_413(small: Stack) -> None:
    c = httpx.Client(base_url=small.url, timeout=30)
    r = c.post(CHAT, json={"messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = c.post(CHAT, json={"messages": MSG * 4, "max_tokens": 2})
    assert r.status_code == 413 and r.json()["error"]["param"] == "messages"
    assert c.post(CHAT, json={"messages": MSG * 3, "max_tokens": 2}).status_code == 200
    r = c.post(CHAT, headers={"X-Parrot-Session": "s1", "X-Parrot-Async": "1",
                              "X-Parrot-Output": "o"},
               json={"messages": [{"role": "user", "content": "{{a}} {{b}} {{c}}"}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_placeholders"
    # variables per session
    put = lambda sid, n, v="v": c.put(f"/v1/sessions/{sid}/variables/{n}", json={"value": v})  # noqa: E731
    assert put("s2", "a").status_code == 200
    assert put("s2", "b").status_code == 200
    r = put("s2", "c")
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_variables"
    # value size
    r = put("s3", "big", "x" * 65)
    assert r.status_code == 413
    assert c.get("/v1/sessions/s3/variables/big").status_code == 404  # nothing half-written
    # an output larger than the value limit fails its variable, it never holds a cut value
    r = c.post(CHAT, headers={"X-Parrot-Session": "s4", "X-Parrot-Output": "long"},
               json={"messages": MSG, "max_tokens": 200})
    assert r.status_code == 413, r.text
    v = c.get("/v1/sessions/s4/variables/long").json()
    assert v["status"] == "failed" and v["value"] is None


# -- per-tenant rates (429), shared by replicas ----------------------------------------


def test_rpm_429_with_retry_after_across_replicas(redis_url: str, tmp_path: Path) -> None:
    path = keys_file(tmp_path, {"k-slow": {"tenant": "slow", "rpm": 4},
                                "k-free": {"tenant": "free"}})
    with start_stack(redis_url, engines=1, replicas=2, api_keys=path) as s:
        urls = [s.url, s.extra_gateways[0].url]
        body = {"messages": MSG, "max_tokens": 2}
        left = window_of(time.time())[1]
        if left < 10:  # the six requests must share one fixed minute window (CI once split them)
            time.sleep(left + 0.1)
        codes = [httpx.post(urls[i % 2] + CHAT, json=body, headers=auth("k-slow"), timeout=30)
                 for i in range(6)]
        assert [r.status_code for r in codes[:4]] == [200] * 4
        for r in codes[4:]:  # the count is shared: replica 2 saw only 3
            assert_429(r)
        # another tenant is not affected
        assert httpx.post(urls[1] + CHAT, json=body, headers=auth("k-free")).status_code == 200


def test_tpm_429(redis_url: str, tmp_path: Path) -> None:
    path = keys_file(tmp_path, {"k": {"tenant": "t", "tpm": 300}})
    with start_stack(redis_url, engines=1, api_keys=path) as s:
        body = {"messages": MSG, "max_tokens": 200}
        assert httpx.post(s.url + CHAT, json=body, headers=auth("k"), timeout=30).status_code == 200
        assert_429(httpx.post(s.url + CHAT, json=body, headers=auth("k"), timeout=30))


def test_tpm_is_corrected_by_reported_usage(redis_url: str, tmp_path: Path) -> None:
    """The tokens/min counter ends at what the engine reported (prompt + completion), not at
    the up-front estimate: plain, streamed and semantic requests alike."""
    path = keys_file(tmp_path, {"k": {"tenant": "t", "tpm": 10**6}})
    db = redis.Redis.from_url(redis_url)
    with start_stack(redis_url, engines=1, api_keys=path) as s:
        for attempt in range(3):  # a minute boundary in between would split the count
            window = window_of(time.time())[0]
            used = 0
            prompt = "a" * 800  # 200 tokens estimated, far fewer really
            for stream in (False, True):
                r = httpx.post(s.url + CHAT, headers=auth("k"), timeout=30, json={
                    "messages": [{"role": "user", "content": prompt}], "max_tokens": 7,
                    "ignore_eos": True, "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {})})
                assert r.status_code == 200
                if stream:
                    chunks = [json.loads(x[6:]) for x in r.text.splitlines()
                              if x.startswith("data: {")]
                    u = next(c["usage"] for c in chunks if c.get("usage"))
                else:
                    u = r.json()["usage"]
                used += u["prompt_tokens"] + u["completion_tokens"]
            r = httpx.post(s.url + CHAT, headers={**auth("k"), "X-Parrot-Session": "u1",
                                                  "X-Parrot-Output": f"o{attempt}"}, timeout=30,
                           json={"messages": [{"role": "user", "content": prompt}],
                                 "max_tokens": 7, "ignore_eos": True})
            assert r.status_code == 200
            used += r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"]
            key = f"parrot:rl:t:tpm:{window}"
            deadline = time.monotonic() + 5
            while int(db.get(key) or 0) != used and time.monotonic() < deadline:
                time.sleep(0.05)
            if window == window_of(time.time())[0]:
                assert int(db.get(key) or 0) == used < 3 * requested_tokens(
                    {"messages": [{"role": "user", "content": prompt}], "max_tokens": 7})
                break
    db.close()


def test_max_sessions_429_until_one_is_deleted(redis_url: str, tmp_path: Path) -> None:
    path = keys_file(tmp_path, {"k": {"tenant": "t", "max_sessions": 2},
                                "k2": {"tenant": "other", "max_sessions": 1}})
    with start_stack(redis_url, engines=1, replicas=2, api_keys=path) as s:
        a = httpx.Client(base_url=s.url, headers=auth("k"), timeout=30)
        b = httpx.Client(base_url=s.extra_gateways[0].url, headers=auth("k"), timeout=30)
        assert a.put("/v1/sessions/one/variables/x", json={"value": "1"}).status_code == 200
        r = b.post(CHAT, headers={"X-Parrot-Session": "two"}, json={"messages": MSG, "max_tokens": 2})
        assert r.status_code == 200
        # a third live session is refused on either replica; the live ones keep working
        assert_429(b.put("/v1/sessions/three/variables/x", json={"value": "1"}), "too_many_sessions")
        assert_429(a.post(CHAT, headers={"X-Parrot-Session": "three"},
                          json={"messages": MSG, "max_tokens": 2}), "too_many_sessions")
        assert a.put("/v1/sessions/one/variables/y", json={"value": "2"}).status_code == 200
        # other tenants count separately
        o = httpx.Client(base_url=s.url, headers=auth("k2"), timeout=30)
        assert o.put("/v1/sessions/one/variables/x", json={"value": "1"}).status_code == 200
        # deleting one frees its slot
        assert b.delete("/v1/sessions/one").status_code == 200
        assert a.put("/v1/sessions/three/variables/x", json={"value": "1"}).status_code == 200


def test_max_sessions_slots_expire_with_the_session_ttl(redis_url: str, tmp_path: Path) -> None:
    import time

    path = keys_file(tmp_path, {"k": {"tenant": "t", "max_sessions": 1}})
    with start_stack(redis_url, engines=1, api_keys=path, session_ttl_s=1) as s:
        c = httpx.Client(base_url=s.url, headers=auth("k"), timeout=30)
        assert c.put("/v1/sessions/a/variables/x", json={"value": "1"}).status_code == 200
        assert_429(c.put("/v1/sessions/b/variables/x", json={"value": "1"}), "too_many_sessions")
        time.sleep(1.2)
        assert c.put("/v1/sessions/b/variables/x", json={"value": "1"}).status_code == 200
