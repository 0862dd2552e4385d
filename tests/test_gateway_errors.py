"""Bad input gets OpenAI-shaped 4xx errors; engine failures get 502/503, never a hang."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import pytest

from gateway.testing import Stack, start_engine, start_gateway

pytestmark = pytest.mark.timeout(120)

MSG = [{"role": "user", "content": "hi"}]

CASES: list[tuple[str, str, Any, dict[str, str], int, str | None]] = [
    # (id, path, body (bytes or json), headers, status, param)
    ("invalid-json", "/v1/chat/completions", b"{not json", {}, 400, None),
    ("empty-body", "/v1/chat/completions", b"", {}, 400, None),
    ("array-body", "/v1/chat/completions", [1, 2], {}, 400, None),
    ("missing-messages", "/v1/chat/completions", {"model": "x"}, {}, 400, "messages"),
    ("empty-messages", "/v1/chat/completions", {"messages": []}, {}, 400, "messages"),
    ("messages-not-list", "/v1/chat/completions", {"messages": "hi"}, {}, 400, "messages"),
    ("bad-role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, {}, 400,
     "messages[0].role"),
    ("content-number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, {},
     400, "messages[0].content"),
    ("max-tokens-string", "/v1/chat/completions", {"messages": MSG, "max_tokens": "10"}, {}, 400,
     "max_tokens"),
    ("max-tokens-negative", "/v1/chat/completions", {"messages": MSG, "max_tokens": -1}, {}, 400,
     "max_tokens"),
    ("temperature-high", "/v1/chat/completions", {"messages": MSG, "temperature": 9}, {}, 400,
     "temperature"),
    ("n-zero", "/v1/chat/completions", {"messages": MSG, "n": 0}, {}, 400, "n"),
    ("stream-not-bool", "/v1/chat/completions", {"messages": MSG, "stream": "yes"}, {}, 400, "stream"),
    ("stop-number", "/v1/chat/completions", {"messages": MSG, "stop": 3}, {}, 400, "stop"),
    ("unknown-model", "/v1/chat/completions", {"model": "no-such-model", "messages": MSG}, {}, 404,
     "model"),
    ("completion-max-completion-tokens-list", "/v1/completions",
     {"prompt": "hi", "max_tokens": 4, "max_completion_tokens": []}, {}, 400, "max_completion_tokens"),
    ("missing-prompt", "/v1/completions", {"model": "x"}, {}, 400, "prompt"),
    ("prompt-dict", "/v1/completions", {"prompt": {"a": 1}}, {}, 400, "prompt"),
    ("bad-session-header", "/v1/chat/completions", {"messages": MSG},
     {"X-Parrot-Session": "bad session!"}, 400, "x-parrot-session"),
    ("bad-output-header", "/v1/chat/completions", {"messages": MSG},
     {"X-Parrot-Session": "s1", "X-Parrot-Output": "1abc"}, 400, "x-parrot-output"),
    ("async-without-output", "/v1/chat/completions", {"messages": MSG},
     {"X-Parrot-Session": "s1", "X-Parrot-Async": "1"}, 400, "x-parrot-async"),
    ("bad-criteria", "/v1/chat/completions", {"messages": MSG},
     {"X-Parrot-Session": "s1", "X-Parrot-Criteria": "fast"}, 400, "x-parrot-criteria"),
    ("bad-timeout", "/v1/chat/completions", {"messages": MSG},
     {"X-Parrot-Session": "s1", "X-Parrot-Timeout": "-3"}, 400, "x-parrot-timeout"),
    ("bad-placeholder", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "x {{9bad}} y"}]}, {"X-Parrot-Session": "s1"}, 400,
     "messages[0].content"),
    ("unknown-route", "/v1/nothing", {"messages": MSG}, {}, 404, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(stack: Stack, case: tuple[Any, ...]) -> None:
    _, path, body, headers, status, param = case
    if isinstance(body, bytes):
        r = httpx.post(stack.url + path, content=body,
                       headers={"content-type": "application/json", **headers})
    else:
        r = httpx.post(stack.url + path, json=body, headers=headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param


def test_wrong_method_is_405_openai_shaped(stack: Stack) -> None:
    r = httpx.get(stack.url + "/v1/chat/completions")
    assert r.status_code == 405
    assert "error" in r.json()


def test_oversized_body_is_413(redis_url: str) -> None:
    engine = start_engine()
    gw = start_gateway(redis_url, [engine.url], max_body_bytes=1000)
    try:
        r = httpx.post(gw.url + "/v1/chat/completions",
                       json={"messages": [{"role": "user", "content": "x" * 5000}]})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        ok = httpx.post(gw.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 2})
        assert ok.status_code == 200
    finally:
        gw.stop()
        engine.stop()


def test_engine_down_gives_503_and_other_engine_serves(redis_url: str) -> None:
    """One engine dies: requests keep succeeding on the other one (retry before first token)."""
    a, b = start_engine(time_scale=0.01), start_engine(time_scale=0.01)
    gw = start_gateway(redis_url, [a.url, b.url], health_interval_s=0.2)
    try:
        body = {"messages": MSG, "max_tokens": 3}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
        a.stop()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(
                lambda i: httpx.post(gw.url + "/v1/chat/completions",
                                     json={"messages": [{"role": "user", "content": f"m{i}"}],
                                           "max_tokens": 3}, timeout=30).status_code,
                range(16)))
        assert codes == [200] * 16
        b.stop()
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code in (502, 503)
        assert r.json()["error"]["type"] == "server_error"
    finally:
        gw.stop()
        for e in (a, b):
            e.stop()


def test_engine_killed_mid_request(redis_url: str) -> None:
    """A request in flight when its engine process is killed fails with 502/503; never hangs."""
    from gateway.embedded import start_sim_engines

    sims = start_sim_engines(1, profile="h100-llama3-8b", time_scale=0.5)
    gw = start_gateway(redis_url, sims.urls, health_interval_s=0.2, retry_budget=0)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(
                httpx.post, gw.url + "/v1/chat/completions",
                json={"messages": MSG, "max_tokens": 400}, timeout=60,
            )
            time.sleep(0.7)
            sims.procs[0].kill()
            r = fut.result(timeout=60)
        assert r.status_code in (502, 503), r.text
        assert r.json()["error"]["message"]
        ready = httpx.get(gw.url + "/ready")
        assert ready.status_code == 503
    finally:
        gw.stop()
        sims.stop()


def test_max_tokens_beyond_context_is_rejected_not_pending(stack: Stack) -> None:
    r = httpx.post(stack.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 10**7},
                   timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    h = {"X-Parrot-Session": "ctx1", "X-Parrot-Output": "o", "X-Parrot-Async": "1"}
    r = httpx.post(stack.url + "/v1/chat/completions", headers=h,
                   json={"messages": MSG, "max_tokens": 10**7}, timeout=30)
    assert r.status_code == 400  # refused at submission, never left pending
    assert httpx.get(stack.url + "/v1/sessions/ctx1/variables/o").status_code == 404
