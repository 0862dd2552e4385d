"""The real OpenAI SDK and LangChain against a running gateway over simulated engines."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from gateway.testing import Stack

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


def test_completions_and_passthrough_fields(stack: Stack) -> None:
    c = client(stack)
    r = c.completions.create(
        model=model_of(stack), prompt="Once upon a time", max_tokens=5,
        extra_body={"ignore_eos": True, "some_unknown_field": 1},
    )
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 5
    chunks = list(c.completions.create(model=model_of(stack), prompt="abc", max_tokens=3, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices)


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
