"""``--backend-kind openai`` end to end: the gateway over engines that speak only the OpenAI
API (the simulated engine with its SGLang routes and fields off, as vLLM or llama.cpp would
be): chat and completions, streamed and not, usage, n, stop, seed, logprobs, models,
errors, tools, the Responses API, semantic variables, and a clear 404 for /generate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_gateway, start_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[Stack]:
    """The gateway streams from the engines even for non-streaming clients (the path that
    must ask OpenAI engines for usage); a second one makes plain engine calls."""
    s = start_stack(redis_server.url, engines=2, time_scale=0.01,
                    sim={"api": "openai", "eos_after": (4, 16)}, backend_kind="openai",
                    engine_streaming=True)
    s.extra_gateways.append(start_gateway(redis_server.url, s.engine_urls, backend_kind="openai",
                                          engine_streaming=False))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


MSG = [{"role": "user", "content": "Name three birds."}]


def test_engines_really_are_openai_only(stack: Stack) -> None:
    for url in stack.engine_urls:
        assert httpx.post(url + "/generate", json={"text": "x"}).status_code == 404
        assert httpx.get(url + "/get_server_info").status_code == 404


def test_chat_usage_is_kept_streamed_or_not(client: openai.OpenAI, stack: Stack) -> None:
    """The gateway streams from engines internally; it must ask an OpenAI engine for usage."""
    r = client.chat.completions.create(model="", messages=MSG, max_tokens=12, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 0
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content
    chunks = list(client.chat.completions.create(model="", messages=MSG, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content
    with httpx.stream("POST", stack.url + "/v1/chat/completions", timeout=30, json={
            "model": "", "messages": MSG, "max_tokens": 4, "stream": True}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert all('"usage":{' not in ln for ln in lines)  # not asked for: not sent
    metrics = httpx.get(stack.url + "/metrics").text
    completion = [ln for ln in metrics.splitlines()
                  if ln.startswith('parrot_tokens_total{kind="completion"}')]
    assert completion and float(completion[0].split()[-1]) >= 24


def test_request_fields_reach_the_engine(client: openai.OpenAI) -> None:
    def text(**kw: Any) -> tuple[str, str | None, int]:
        r = client.chat.completions.create(model="", messages=MSG, max_tokens=20, **kw)
        assert r.usage is not None
        return r.choices[0].message.content or "", r.choices[0].finish_reason, r.usage.completion_tokens

    full, finish, n = text(extra_body={"ignore_eos": True})
    assert finish == "length" and n == 20
    free, finish, n = text()
    assert finish == "stop" and 4 <= n <= 16 and full.startswith(free)
    assert text(seed=1, extra_body={"ignore_eos": True}) != text(seed=2, extra_body={"ignore_eos": True})
    stop = " " + full.split()[5]
    cut, finish, _ = text(stop=[stop], extra_body={"ignore_eos": True})
    assert finish == "stop" and cut == full[: full.index(stop)]
    two = client.chat.completions.create(model="", messages=MSG, max_tokens=5, n=2, seed=3)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content != two.choices[
        1].message.content
    lp = client.chat.completions.create(model="", messages=MSG, max_tokens=6, logprobs=True, top_logprobs=2,
                                        extra_body={"ignore_eos": True})
    assert lp.choices[0].logprobs is not None and len(lp.choices[0].logprobs.content or []) == 6


def test_completions_and_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["sim-llama-3-8b"]
    r = client.completions.create(model="", prompt="Once upon a time", max_tokens=7, n=2,
                                  extra_body={"ignore_eos": True})
    assert len(r.choices) == 2 and r.usage is not None and r.usage.completion_tokens == 14
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="", prompt="Once upon a time", max_tokens=7, stream=True, extra_body={"ignore_eos": True})
        if c.choices)
    assert len(streamed.split()) >= 3


def test_tools_and_responses(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    messages: list[Any] = [{"role": "user", "content": "weather in 'Quito'?"}]
    r = client.chat.completions.create(model="", messages=messages, tools=tools)
    call = (r.choices[0].message.tool_calls or [])[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Quito"}
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "cold"}]
    final = client.chat.completions.create(model="", messages=messages, tools=tools)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content
    resp = client.responses.create(model="", input="Name a bird.")
    assert resp.status == "completed" and resp.output_text and resp.usage is not None
    assert resp.usage.output_tokens > 0
    again = client.responses.create(model="", input="And a fish?", previous_response_id=resp.id)
    assert again.usage is not None and again.usage.input_tokens > resp.usage.input_tokens


def test_semantic_variables_over_openai_engines(stack: Stack) -> None:
    headers = {"X-Parrot-Session": "oa-1", "X-Parrot-Output": "bird"}
    r = httpx.post(stack.url + "/v1/chat/completions", headers=headers, timeout=30,
                   json={"model": "", "messages": MSG, "max_tokens": 6})
    assert r.status_code == 200, r.text
    var = httpx.get(stack.url + "/v1/sessions/oa-1/variables/bird").json()
    assert var["status"] == "ready" and var["value"] == r.json()["choices"][0]["message"]["content"]


def test_errors(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MSG)
    with pytest.raises(openai.BadRequestError) as e:  # refused by the engine, passed on
        client.chat.completions.create(model="", messages=MSG, max_tokens=131072 - 5)
    assert "context length" in str(e.value)
    r = httpx.post(stack.url + "/v1/chat/completions", json={"messages": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    g = httpx.post(stack.url + "/generate", json={"text": "hi"})
    assert g.status_code == 404 and "--backend-kind openai" in g.json()["error"]["message"]


def test_direct_engine_calls_keep_usage_and_tool_calls(stack: Stack) -> None:
    c = openai.OpenAI(base_url=stack.extra_gateways[0].url + "/v1", api_key="unused", max_retries=0)
    r = c.chat.completions.create(model="", messages=MSG, max_tokens=9, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 9
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    t = c.chat.completions.create(model="", messages=[{"role": "user", "content": "weather in 'Bern'?"}],
                                  tools=tools)
    assert json.loads((t.choices[0].message.tool_calls or [])[0].function.arguments) == {"city": "Bern"}
