"""Agents through the gateway with the real OpenAI SDK: tool-call round trips, forced and
parallel calls, structured outputs (``parse`` with pydantic, raw json_schema), streamed
and not, against simulated engines that really answer them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_gateway, start_stack

pytestmark = pytest.mark.timeout(120)

WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
ADD_PARAMS = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                      "parameters": WEATHER_PARAMS, "strict": True}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                      "parameters": ADD_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[Stack]:
    """Two engines; the main gateway streams from them for non-streaming clients too (so its
    answers are assembled from tool-call deltas), a second one makes plain engine calls."""
    s = start_stack(redis_server.url, engines=2, time_scale=0.01, sim={"eos_after": (4, 16)},
                    engine_streaming=True)
    s.extra_gateways.append(start_gateway(redis_server.url, s.engine_urls, engine_streaming=False))
    yield s
    s.stop()


@pytest.fixture(scope="module", params=["assembled", "direct"])
def client(stack: Stack, request: pytest.FixtureRequest) -> openai.OpenAI:
    url = stack.url if request.param == "assembled" else stack.extra_gateways[0].url
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def run_tool(name: str, args: dict[str, Any]) -> str:
    if name == "get_weather":
        return f"22 degrees {args['unit']} in {args['city']}"
    return str(args["a"] + args["b"])


def ask(client: openai.OpenAI, stream: bool, **kw: Any) -> tuple[Any, str | None, list[dict[str, Any]]]:
    """(message-like, finish_reason, tool calls as dicts), streamed or not."""
    kw.setdefault("model", "")
    if not stream:
        r = client.chat.completions.create(**kw)
        msg = r.choices[0].message
        calls = [c.model_dump() for c in msg.tool_calls or []]
        return msg.content, r.choices[0].finish_reason, calls
    text, finish, calls = "", None, {}
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
            for tc in c.delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
                if tc.id:
                    assert acc["id"] is None, "the id comes once, in the call's first delta"
                    acc["id"] = tc.id
                    acc["function"]["name"] = tc.function.name
                acc["function"]["arguments"] += tc.function.arguments or ""
    return text or None, finish, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_round_trip(client: openai.OpenAI, stream: bool) -> None:
    """Assistant tool call -> tool result -> final answer, like any agent loop."""
    messages: list[Any] = [{"role": "system", "content": "You are a weather bot."},
                           {"role": "user", "content": "What is the weather in 'Lisbon', in celsius?"}]
    content, finish, calls = ask(client, stream, messages=messages, tools=TOOLS)
    assert finish == "tool_calls" and not content and len(calls) == 1
    call = calls[0]
    assert call["function"]["name"] == "get_weather" and call["id"]
    args = json.loads(call["function"]["arguments"])
    jsonschema.validate(args, WEATHER_PARAMS)
    assert args == {"city": "Lisbon", "unit": "celsius"}
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": call["id"], "content": run_tool("get_weather", args)}]
    content, finish, calls = ask(client, stream, messages=messages, tools=TOOLS)
    assert finish == "stop" and content and calls == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_forced_parallel_and_refused_tool_choices(client: openai.OpenAI, stream: bool) -> None:
    hello = [{"role": "user", "content": "Hello there"}]
    _, finish, calls = ask(client, stream, messages=hello, tools=TOOLS)  # auto, nothing named
    assert finish == "stop" and calls == []
    _, finish, calls = ask(client, stream, messages=hello, tools=TOOLS, tool_choice="required")
    assert finish == "tool_calls" and len(calls) == 1
    _, _, calls = ask(client, stream, messages=hello, tools=TOOLS,
                      tool_choice={"type": "function", "function": {"name": "add"}})
    assert [c["function"]["name"] for c in calls] == ["add"]
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), ADD_PARAMS)
    both = [{"role": "user", "content": "add 2 and 40, then the weather in 'Oslo' in fahrenheit"}]
    _, finish, calls = ask(client, stream, messages=both, tools=TOOLS)
    assert finish == "tool_calls" and [c["function"]["name"] for c in calls] == ["add", "get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 2, "b": 40}
    assert len({c["id"] for c in calls}) == 2
    _, _, one = ask(client, stream, messages=both, tools=TOOLS, parallel_tool_calls=False)
    assert [c["function"]["name"] for c in one] == ["add"]
    _, finish, none = ask(client, stream, messages=both, tools=TOOLS, tool_choice="none")
    assert finish == "stop" and none == []
    # max_tokens cuts a call short: "length", and the arguments are not complete JSON.
    _, finish, cut = ask(client, stream, messages=both, tools=TOOLS, max_tokens=16)
    assert finish == "length"
    with pytest.raises(ValueError):
        json.loads(cut[-1]["function"]["arguments"])


def test_usage_counts_tool_call_tokens_and_n_choices_differ(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                       tools=TOOLS, tool_choice="required", n=3, seed=11)
    assert [c.finish_reason for c in r.choices] == ["tool_calls"] * 3
    assert len({(c.message.tool_calls[0].function.name, c.message.tool_calls[0].function.arguments)
                for c in r.choices}) > 1
    assert r.usage is not None and r.usage.completion_tokens >= 3 * 12
    again = client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}],
                                           tools=TOOLS, tool_choice="required", n=3, seed=11)
    assert [c.message.tool_calls[0].function.arguments for c in again.choices] == [
        c.message.tool_calls[0].function.arguments for c in r.choices]


class Step(BaseModel):
    explanation: str
    output: int = Field(ge=0, le=100)


class Solution(BaseModel):
    steps: list[Step]
    final_answer: str


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model="", response_format=Solution, messages=[
        {"role": "user", "content": "Solve 8x + 7 = -23 step by step."}])
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Solution) and parsed.steps and r.choices[0].finish_reason == "stop"
    with client.chat.completions.stream(model="", response_format=Solution, messages=[
            {"role": "user", "content": "Solve 8x + 7 = -23 step by step."}]) as s:
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Solution)


@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_output_validates(client: openai.OpenAI, strict: bool) -> None:
    schema = Solution.model_json_schema()
    fmt: Any = {"type": "json_schema",
                "json_schema": {"name": "solution", "schema": schema, "strict": strict}}
    for seed in range(3):
        r = client.chat.completions.create(model="", response_format=fmt, seed=seed,
                                           messages=[{"role": "user", "content": "Solve it."}])
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)
    chunks = client.chat.completions.create(model="", response_format=fmt, seed=0, stream=True,
                                            messages=[{"role": "user", "content": "Solve it."}])
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(streamed), schema)
    obj = client.chat.completions.create(model="", response_format={"type": "json_object"},
                                         messages=[{"role": "user", "content": "JSON please"}])
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)
    cut = client.chat.completions.create(model="", response_format=fmt, max_tokens=6,
                                         messages=[{"role": "user", "content": "Solve it."}])
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None
    assert cut.usage.completion_tokens == 6


def test_bad_tool_requests_are_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "missing"}})
    assert e.value.status_code == 400 and "missing" in str(e.value)
