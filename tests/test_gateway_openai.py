"""The real OpenAI SDK and LangChain against a running gateway over simulated engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def model_of(stack: Stack) -> str:
    return client(stack).models.list().data[0].id


def test_models_union_of_engines(stack: Stack) -> None:
    models = client(stack).models.list().data
    engine_models = set()
    for url in stack.engine_urls:
        engine_models |= {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
    assert {m.id for m in models} == engine_models


def test_chat_non_stream(stack: Stack) -> None:
    c = client(stack)
    r = c.chat.completions.create(
        model=model_of(stack),
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
        max_tokens=12,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 0


def test_chat_stream_with_usage(stack: Stack) -> None:
    c = client(stack)
    chunks = list(
        c.chat.completions.create(
            model=model_of(stack),
            messages=[{"role": "user", "content": "Count to ten"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stream_without_usage_has_no_usage_chunk(stack: Stack) -> None:
    with httpx.stream(
        "POST",
        stack.url + "/v1/chat/completions",
        json={"model": model_of(stack), "messages": [{"role": "user", "content": "x"}],
              "max_tokens": 4, "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert all('"usage"' not in ln or '"usage":null' in ln for ln in lines[:-1])


@pytest.fixture
def eos_stack(redis_url: str) -> Iterator[Stack]:
    """One engine whose outputs end by themselves (EOS) after 4..12 tokens, behind a gateway."""
    s = start_stack(redis_url, engines=1, sim={"eos_after": (4, 12)})
    yield s
    s.stop()


class Asker:
    """Chat requests through the gateway, plain or semantic, streamed or not, reduced to
    what the engine visibly did with their fields."""

    def __init__(self, url: str, semantic: bool, stream: bool) -> None:
        self.url, self.semantic, self.stream = url, semantic, stream
        self.outputs = 0
        self.mode = f"{'semantic' if semantic else 'plain'}-{'stream' if stream else 'json'}"

    def __call__(self, **fields: Any) -> dict[str, Any]:
        body = {"model": "", "messages": [{"role": "user", "content": "Name three birds."}],
                "max_tokens": 30, **fields}
        headers = {}
        if self.semantic:
            self.outputs += 1
            self.var = f"v{self.outputs}"
            headers = {"X-Parrot-Session": self.mode, "X-Parrot-Output": self.var}
        if not self.stream:
            r = httpx.post(self.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            out = r.json()
            choice = out["choices"][0]
            return {"text": choice["message"]["content"], "finish": choice["finish_reason"],
                    "tokens": out["usage"]["completion_tokens"],
                    "logprobs": (choice["logprobs"] or {}).get("content")}
        body.update(stream=True, stream_options={"include_usage": True})
        with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, headers=headers,
                          timeout=30) as r:
            assert r.status_code == 200, r.read()
            chunks = [json.loads(ln[5:]) for ln in r.iter_lines()
                      if ln.startswith("data:") and ln != "data: [DONE]"]
        choices = [c for ch in chunks for c in ch["choices"]]
        lps = [e for c in choices for e in ((c.get("logprobs") or {}).get("content") or [])]
        return {"text": "".join(c["delta"].get("content") or "" for c in choices),
                "finish": [c["finish_reason"] for c in choices if c.get("finish_reason")][-1],
                "tokens": chunks[-1]["usage"]["completion_tokens"],
                "logprobs": lps if "logprobs" in fields else None}


@pytest.mark.parametrize("semantic", [False, True], ids=["plain", "semantic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_request_fields_pass_through_to_the_engine(eos_stack: Stack, semantic: bool, stream: bool) -> None:
    """The engine visibly honours ignore_eos, max_tokens, seed, temperature, stop and logprobs,
    so a field the gateway dropped or rewrote would show; an unknown field changes nothing."""
    ask = Asker(eos_stack.url, semantic, stream)
    full = ask(ignore_eos=True)
    assert full["tokens"] == 30 and full["finish"] == "length" and full["logprobs"] is None
    free = ask()  # EOS ends it early
    assert 4 <= free["tokens"] <= 12 and free["finish"] == "stop"
    assert full["text"].startswith(free["text"])
    assert ask(ignore_eos=True, some_unknown_field={"x": [1]}, x_vendor_flag=True) == full

    s1, s2 = ask(ignore_eos=True, seed=1), ask(ignore_eos=True, seed=2)
    assert s1["text"] != s2["text"] and s1["tokens"] == s2["tokens"] == 30
    g1, g2 = (ask(ignore_eos=True, seed=s, temperature=0) for s in (1, 2))
    assert g1 == g2 and g1["text"] not in (s1["text"], s2["text"])

    stop = " " + full["text"].split()[6]
    cut = ask(ignore_eos=True, stop=[stop])
    assert cut["finish"] == "stop" and cut["text"] == full["text"][: full["text"].index(stop)]
    if semantic:  # the session variable holds what the engine produced
        value = httpx.get(f"{eos_stack.url}/v1/sessions/{ask.mode}/variables/{ask.var}").json()
        assert value["status"] == "ready" and value["value"] == cut["text"]

    lp = ask(ignore_eos=True, logprobs=True, top_logprobs=2)
    assert lp["text"] == full["text"] and len(lp["logprobs"]) == 30
    assert "".join(e["token"] for e in lp["logprobs"]) == full["text"]
    assert all(len(e["top_logprobs"]) == 2 for e in lp["logprobs"])


def test_completions_sdk_extra_body(eos_stack: Stack) -> None:
    c = client(eos_stack)
    r = c.completions.create(
        model="", prompt="Once upon a time", max_tokens=20, logprobs=1,
        extra_body={"ignore_eos": True, "some_unknown_field": 1},
    )
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 20
    assert r.choices[0].logprobs is not None and "".join(r.choices[0].logprobs.tokens) == r.choices[0].text
    free = c.completions.create(model="", prompt="Once upon a time", max_tokens=20)
    assert free.choices[0].finish_reason == "stop" and r.choices[0].text.startswith(free.choices[0].text)
    assert free.choices[0].logprobs is None
    chunks = list(c.completions.create(model="", prompt="Once upon a time", max_tokens=20, stream=True,
                                       extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text


def test_async_client_concurrent(stack: Stack) -> None:
    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0)
        model = (await c.models.list()).data[0].id
        rs = await asyncio.gather(
            *[
                c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=6
                )
                for i in range(20)
            ]
        )
        await c.close()
        return [r.choices[0].message.content or "" for r in rs]

    texts = asyncio.run(run())
    assert len(texts) == 20 and all(texts)


def test_cached_tokens_reported_for_shared_prefix(stack: Stack) -> None:
    c = client(stack)
    system = "You are a helpful assistant. " * 150
    usages = []
    for q in ("first", "second"):
        r = c.chat.completions.create(
            model=model_of(stack),
            messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            max_tokens=4,
        )
        usages.append(r.usage)
    details = usages[1].prompt_tokens_details
    assert details is not None and details.cached_tokens >= 800  # routed to the same engine


def test_langchain_chat_openai(stack: Stack) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=stack.url + "/v1", api_key="x", model=model_of(stack), max_tokens=10,
                     max_retries=0)
    msg = llm.invoke("Say hello")
    assert isinstance(msg.content, str) and msg.content
    streamed = "".join(str(c.content) for c in llm.stream("Stream please"))
    assert streamed


def test_request_id_echoed_and_metrics(stack: Stack) -> None:
    r = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"X-Request-Id": "my-req-1"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "my-req-1"
    generated = httpx.get(stack.url + "/health").headers["x-request-id"]
    assert generated.startswith("req-")
    text = httpx.get(stack.url + "/metrics").text
    for name in ("parrot_requests_total", "parrot_request_latency_seconds",
                 "parrot_engine_inflight_requests", "parrot_engine_errors_total", "parrot_tokens_total"):
        assert name in text
    assert 'parrot_tokens_total{kind="completion"}' in text


def test_health_and_ready(stack: Stack) -> None:
    assert httpx.get(stack.url + "/health").json() == {"status": "ok"}
    r = httpx.get(stack.url + "/ready")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_non_streaming_engine_calls_when_configured(redis_url: str) -> None:
    """engine_streaming=false sends non-streaming requests to engines as they came."""
    from gateway.testing import start_engine, start_gateway

    engine = start_engine()
    gw = start_gateway(redis_url, [engine.url], engine_streaming=False)
    try:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=7)
        assert r.choices[0].message.content and r.usage is not None
        assert r.usage.completion_tokens == 7
        text = httpx.get(gw.url + "/metrics").text
        assert 'parrot_tokens_total{kind="completion"} 7.0' in text
    finally:
        gw.stop()
        engine.stop()
