"""Responses API <-> chat, pure: request translation, output items, the event sequence of
mixed text and tool-call streams, and the per-tenant store's keys (real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.errors import BadRequest
from gateway.redis_server import RedisServer
from gateway.response_store import ResponseStore, StoredResponse
from gateway.responses_schema import parse_responses_body
from gateway.responses_translate import EventStream, chat_body, from_chat, output_messages, skeleton

pytestmark = pytest.mark.timeout(30)


def test_items_become_chat_messages() -> None:
    req = parse_responses_body({
        "model": "m", "instructions": "Be nice.", "max_output_tokens": 9, "temperature": 0,
        "tool_choice": {"type": "function", "name": "f"}, "seed": 4, "include": ["x"],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"},
                            "strict": True}},
        "input": [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "input_text", "text": "look: "},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
            {"type": "reasoning", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "two"}]},
        ]})
    body = chat_body(req, [{"role": "user", "content": "before"}], stream=False)
    assert body["messages"] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "before"},
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "look: "}, {"type": "image_url", "image_url": {
            "url": "data:image/png;base64,AA", "detail": "auto"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert body["max_tokens"] == 9 and body["temperature"] == 0 and body["seed"] == 4
    assert "include" not in body and "instructions" not in body and "text" not in body
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "object"}, "strict": True}}


def test_chat_answers_become_output_items() -> None:
    req = parse_responses_body({"input": "hi", "max_output_tokens": 5})
    base = skeleton(req, "resp_1")
    chat = {"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 5,
                                    "prompt_tokens_details": {"cached_tokens": 2}},
            "choices": [{"index": 0, "finish_reason": "length", "message": {
                "role": "assistant", "content": "Hello", "tool_calls": [
                    {"id": "c9", "type": "function", "function": {"name": "g", "arguments": "{\"x\""}}]}}]}
    r = from_chat(base, chat)
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["type"] for i in r["output"]] == ["message", "function_call"]
    assert r["output"][0]["content"][0]["text"] == "Hello" and r["output"][1]["call_id"] == "c9"
    assert r["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
    assert output_messages(r["output"]) == [{"role": "assistant", "content": "Hello", "tool_calls": [
        {"id": "c9", "type": "function", "function": {"name": "g", "arguments": "{\"x\""}}]}]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_event_stream_of_text_then_two_calls() -> None:
    es = EventStream(skeleton(parse_responses_body({"input": "x"}), "resp_2"))
    events = es.start()
    for c in [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Let me "}),
              _chunk({"content": "check."}),
              _chunk({"tool_calls": [{"index": 0, "id": "a", "type": "function",
                                      "function": {"name": "f", "arguments": ""}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
              _chunk({"tool_calls": [{"index": 1, "id": "b", "type": "function",
                                      "function": {"name": "g", "arguments": "{\"k\":"}}]}),
              _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "2}"}}]}),
              _chunk({}, "tool_calls"),
              {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}]:
        events += es.chunk(c)
    closing, response = es.finish()
    events += closing + [es.terminal(response)]
    assert [e["type"].removeprefix("response.") for e in events] == [
        "created", "in_progress", "output_item.added", "content_part.added", "output_text.delta",
        "output_text.delta", "output_text.done", "content_part.done", "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.done",
        "output_item.done", "output_item.added", "function_call_arguments.delta",
        "function_call_arguments.delta", "function_call_arguments.done", "output_item.done", "completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [(i["type"], i.get("arguments")) for i in response["output"]] == [
        ("message", None), ("function_call", "{}"), ("function_call", "{\"k\":2}")]
    assert response["output"][0]["content"][0]["text"] == "Let me check."
    assert response["status"] == "completed" and response["usage"]["output_tokens"] == 2
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]


def test_event_stream_without_output_still_has_a_message() -> None:
    es = EventStream(skeleton(parse_responses_body({"input": "x"}), "resp_3"))
    es.start()
    es.chunk(_chunk({}, "length"))
    closing, response = es.finish()
    assert [e["type"] for e in closing][-1] == "response.output_item.done"
    assert response["output"][0]["content"][0]["text"] == "" and response["status"] == "incomplete"
    assert es.terminal(response)["type"] == "response.incomplete"


@pytest.mark.parametrize("body,param", [
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"input": "x", "conversation": "c1"}, "conversation"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0]"),
])
def test_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_responses_body(body)
    assert e.value.param == param


def test_store_keys_are_per_tenant_and_hash_tagged(redis_server: RedisServer) -> None:
    async def run() -> None:
        r = aioredis.Redis.from_url(redis_server.url)
        store = ResponseStore(r, ttl_s=60)
        await store.put("team a", StoredResponse({"id": "resp_x", "object": "response"}, [{"role": "user"}]))
        key = store.key("team a", "resp_x")
        assert key == "parrot:{team%20a:resp_x}:response" and 0 < await r.ttl(key) <= 60
        assert (await store.get("team a", "resp_x")).conversation == [{"role": "user"}]  # type: ignore[union-attr]
        assert await store.get("team-b", "resp_x") is None and not await store.delete("team-b", "resp_x")
        assert await store.get("team a", "../resp_x") is None and store.key("t", "a:b") is None
        assert await store.delete("team a", "resp_x") and await store.get("team a", "resp_x") is None
        await r.aclose()

    asyncio.run(run())
