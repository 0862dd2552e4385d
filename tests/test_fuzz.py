"""Fuzzing the running gateway (a real uvicorn server on loopback) with hypothesis:
request bodies, X-Parrot-* headers and placeholder strings. Never a 500, never a hang
(every request has a timeout), and every error is OpenAI-shaped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(300)

TIMEOUT = httpx.Timeout(20.0)
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: dict[str, int] = {}


@pytest.fixture(scope="module")
def gw(redis_server: RedisServer) -> Iterator[Stack]:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    s = start_stack(redis_server.url, engines=2, time_scale=0.005, max_body_bytes=64 * 1024,
                    max_value_bytes=4096)
    yield s
    s.stop()
    print(f"\nfuzz inputs tried: {TRIED} (total {sum(TRIED.values())})")


@pytest.fixture(scope="module")
def client(gw: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=TIMEOUT) as c:
        yield c


def check(r: httpx.Response, kind: str) -> None:
    TRIED[kind] = TRIED.get(kind, 0) + 1
    assert r.status_code != 500 and r.status_code < 600, r.text
    if r.status_code >= 400 and r.status_code != 499:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]


json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.text(max_size=10), kids, max_size=4), max_leaves=12)

FIELDS = ["model", "messages", "prompt", "max_tokens", "stream", "n", "temperature", "top_p", "stop",
          "user", "stream_options", "max_completion_tokens", "seed", "logprobs"]
VALID_CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
VALID_COMPLETION: dict[str, Any] = {"prompt": "hi", "max_tokens": 4}


@st.composite
def mutated(draw: Any) -> tuple[str, dict[str, Any]]:
    """A valid body with some fields replaced by arbitrary JSON (huge counts included:
    they must be refused or bounded, never run for minutes)."""
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    body = dict(VALID_CHAT if path.endswith("chat/completions") else VALID_COMPLETION)
    for key in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        body[key] = draw(json_values | st.integers(0, 64))
    if draw(st.booleans()):
        body["messages"] = draw(st.lists(st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]) | st.text(max_size=5),
             "content": st.text(max_size=60) | json_values}), max_size=4))
    return path, body


@FUZZ
@given(case=mutated())
@example(case=("/v1/chat/completions", {**VALID_CHAT, "max_tokens": 10**12}))  # once hung the engine
@example(case=("/v1/completions", {**VALID_COMPLETION, "max_tokens": 10**5, "n": 128}))
@example(case=("/v1/chat/completions", {**VALID_CHAT, "max_completion_tokens": 2**40}))
def test_fuzz_bodies(client: httpx.Client, case: tuple[str, dict[str, Any]]) -> None:
    path, body = case
    r = client.post(path, json=body)
    check(r, "bodies")


@FUZZ
@given(raw=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions",
                             "/v1/sessions/s/variables/v"]),
       method=st.sampled_from(["POST", "PUT"]))
def test_fuzz_raw_bytes(client: httpx.Client, raw: bytes, path: str, method: str) -> None:
    r = client.request(method, path, content=raw, headers={"content-type": "application/json"})
    check(r, "raw")
    if r.status_code == 200:
        assert method == "PUT" or path != "/v1/completions" or raw  # a valid body ran for real


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
header_values = header_text | st.sampled_from(
    ["", "1", "0", "true", "latency", "throughput", "nan", "inf", "-1", "1e309", "0.5", "a" * 200,
     "s.e_s-1", "x" * 129, "{{x}}", "ok_name"])
header_values = header_values.map(str.strip)  # h11 refuses to send surrounding whitespace


@FUZZ
@given(session=header_values, output=st.none() | header_values, is_async=st.none() | header_values,
       criteria=st.none() | header_values, timeout=st.none() | header_values,
       request_id=st.none() | header_values, stream=st.booleans())
def test_fuzz_headers(client: httpx.Client, session: str, output: str | None, is_async: str | None,
                      criteria: str | None, timeout: str | None, request_id: str | None,
                      stream: bool) -> None:
    headers = {"X-Parrot-Session": session}
    for name, value in (("X-Parrot-Output", output), ("X-Parrot-Async", is_async),
                        ("X-Parrot-Criteria", criteria), ("X-Parrot-Timeout", timeout),
                        ("X-Request-Id", request_id)):
        if value is not None:
            headers[name] = value
    body = {"messages": [{"role": "user", "content": "no placeholders here"}], "max_tokens": 3,
            "stream": stream}
    r = client.post("/v1/chat/completions", json=body, headers=headers)
    check(r, "headers")
    if request_id and request_id.isprintable() and r.status_code != 499:
        assert r.headers["x-request-id"] == request_id[:128].strip() or r.headers["x-request-id"]


placeholder_text = st.lists(
    st.sampled_from(["{{", "}}", "\\{{", "{", "}", "\\", "{{x}}", "{{ x }}", "{{_a1}}", "{{9}}",
                     "{{" + "n" * 64 + "}}", "{{" + "n" * 65 + "}}", "{{doc}}", "{{a}}{{b}}",
                     "{{{x}}}", "é", "\x00", "\u2028", " "]) | st.text(max_size=8),
    max_size=12).map("".join)


@FUZZ
@given(content=placeholder_text, prompt_route=st.booleans(), is_async=st.booleans(),
       n=st.integers(0, 10**6))
def test_fuzz_placeholders(client: httpx.Client, content: str, prompt_route: bool, is_async: bool,
                           n: int) -> None:
    sid = f"fz{n}"
    client.put(f"/v1/sessions/{sid}/variables/doc", json={"value": "{{x}} stays literal"})
    headers = {"X-Parrot-Session": sid, "X-Parrot-Timeout": "1"}
    if is_async:
        headers.update({"X-Parrot-Async": "1", "X-Parrot-Output": "out"})
    if prompt_route:
        r = client.post("/v1/completions", json={"prompt": content, "max_tokens": 3}, headers=headers)
    else:
        r = client.post("/v1/chat/completions", headers=headers, json={
            "messages": [{"role": "user", "content": content}], "max_tokens": 3})
    check(r, "placeholders")
    # a pending input ends at the 1 s session deadline: 504/424, never a hang
    if is_async and r.status_code == 200:
        v = client.get(f"/v1/sessions/{sid}/variables/out?wait=5")
        check(v, "placeholders")
        assert v.json()["status"] in ("ready", "failed"), v.text


def test_gateway_still_healthy_after_fuzzing(client: httpx.Client) -> None:
    assert client.get("/ready").status_code == 200
    r = client.post("/v1/chat/completions", json=VALID_CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
