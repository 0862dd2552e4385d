"""Folding streamed chunks into the non-streaming answer (tool calls included)."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.assemble import Assembler

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {
    "type": "object", "properties": {k: {"type": t}}, "required": [k]}}}
    for n, k, t in (("get_weather", "city", "string"), ("magic_function", "input", "integer"))]


def test_chat_chunks_fold_into_a_completion() -> None:
    a = Assembler("chat")
    a.add({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"},
                                   "logprobs": {"content": [{"token": "Hel"}]}}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"},
                                   "logprobs": {"content": [{"token": "lo"}]}, "finish_reason": "stop"}]})
    a.add({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    body = a.result()
    assert body["object"] == "chat.completion" and body["id"] == "c1" and body["model"] == "m"
    c = body["choices"][0]
    assert c["message"] == {"role": "assistant", "content": "Hello"}
    assert c["finish_reason"] == "stop"
    assert [t["token"] for t in c["logprobs"]["content"]] == ["Hel", "lo"]
    assert body["usage"]["completion_tokens"] == 2


def test_tool_calls_and_multiple_choices() -> None:
    a = Assembler("chat")
    a.add({"choices": [{"index": 1, "delta": {"tool_calls": [
        {"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]})
    a.add({"choices": [{"index": 1, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]})
    a.add({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]})
    body = a.result()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    call = body["choices"][1]["message"]["tool_calls"][0]
    assert call == {"id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\": 1}"}}
    assert body["choices"][0]["message"]["content"] == "x"


def test_text_completion() -> None:
    a = Assembler("completion")
    a.add({"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": "ab"}]})
    a.add({"id": "t", "choices": [{"index": 0, "text": "c", "finish_reason": "length"}]})
    body = a.result()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "abc" and body["choices"][0]["finish_reason"] == "length"


def test_parallel_calls_interleaved_in_one_delta_and_empty_text() -> None:
    a = Assembler("chat")
    a.add({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    a.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{"}}]}}]})
    a.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"name": None, "arguments": "}"}},
        {"index": 0, "function": {"arguments": "{}"}}]}, "finish_reason": "tool_calls"}]})
    msg = a.result()["choices"][0]["message"]
    assert msg["content"] is None  # no text beside the calls: null, as OpenAI answers
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        ("a", "f", "{}"), ("b", "g", "{}")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [
    {"tools": TOOLS, "tool_choice": "required", "n": 2, "seed": 3},
    {"tools": TOOLS, "parallel_tool_calls": True, "messages": [
        {"role": "user", "content": "weather in 'Oslo', then magic_function(4)"}]},
    {"response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 1},
    {"tools": TOOLS, "max_tokens": 12, "tool_choice": "required"},
], ids=["n2", "parallel", "json-logprobs", "cut"])
def test_assembled_stream_equals_the_engines_own_answer(body: dict) -> None:
    """What the gateway assembles from an engine's stream is what the engine answers unstreamed."""
    from backends.sim.app import start_sim_thread
    from backends.sim.config import SimConfig

    body = {"messages": [{"role": "user", "content": "weather in 'Oslo'?"}], "max_tokens": 300, **body}
    with start_sim_thread(SimConfig(time_scale=0.0, eos_after=(4, 12))) as t:
        whole = httpx.post(t.url + "/v1/chat/completions", json=body, timeout=30).json()
        a = Assembler("chat")
        with httpx.stream("POST", t.url + "/v1/chat/completions", timeout=30,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            for ln in r.iter_lines():
                if ln.startswith("data: ") and ln != "data: [DONE]":
                    a.add(json.loads(ln[6:]))
    got = a.result()
    for u in (got["usage"], whole["usage"]):  # the second request finds the first one's prefix cached
        u.pop("prompt_tokens_details")
    assert got["usage"] == whole["usage"]
    for mine, theirs in zip(got["choices"], whole["choices"], strict=True):
        assert mine["finish_reason"] == theirs["finish_reason"]
        assert mine["message"]["content"] == theirs["message"]["content"]
        assert mine["message"].get("tool_calls") == theirs["message"]["tool_calls"]
        assert mine["logprobs"] == theirs["logprobs"]
