"""The simulated engine as an agent's model: schema-valid values, tool choice, tool-call
tokens and their streamed deltas, structured outputs, the plain-OpenAI mode."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from enum import Enum
from typing import Any, Literal, Optional

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from analysis.tokenizer import get_tokenizer
from backends.sim.agent import AgentSpec, Tool, agent_generate, named_tools, pieces_of, tools_to_call
from backends.sim.app import SimThread, start_sim_thread
from backends.sim.config import SimConfig
from backends.sim.schema_values import Literals, SchemaError, ValueGenerator
from backends.sim.textgen import WORDS, eos_token_id

pytestmark = pytest.mark.timeout(60)
TOK = get_tokenizer()


class Color(str, Enum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str
    zip: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str = Field(min_length=2, max_length=20)
    age: int = Field(ge=0, lt=130)
    height: float = Field(gt=0.5, le=2.5)
    color: Color
    mood: Literal["happy", "sad"] = "happy"
    tags: list[str] = Field(min_length=1, max_length=3)
    address: Optional[Address] = None
    friends: list[Person] = []
    scores: dict[str, int] = {}
    email: str = Field(json_schema_extra={"format": "email"})
    born: str = Field(json_schema_extra={"format": "date"})
    step: int = Field(multiple_of=5, ge=10, le=40)


SCHEMAS: list[Any] = [
    Person.model_json_schema(),
    {"type": "object", "properties": {"a": {"type": ["integer", "null"]},
                                      "b": {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
                                      "c": {"allOf": [{"type": "object", "properties": {"x": {"const": 1}},
                                                       "required": ["x"]},
                                                      {"properties": {"y": {"type": "null"}},
                                                       "required": ["y"]}]}},
     "required": ["a", "b", "c"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 3}, "uniqueItems": True,
     "minItems": 2, "maxItems": 4},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}], "items": False},
    {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"enum": ["x", 2, None]},
    True,
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_generated_values_validate_against_the_schema(schema: Any) -> None:
    seen = set()
    for seed in range(40):
        v = ValueGenerator(schema, random.Random(seed), WORDS).value()
        jsonschema.validate(v, schema if schema is not True else {})
        seen.add(json.dumps(v, sort_keys=True))
    assert len(seen) > 1 or schema in ({"enum": ["x", 2, None]},)  # the seed matters


def test_values_are_grounded_in_the_last_user_message() -> None:
    schema = {"type": "object", "properties": {"input": {"type": "integer", "exclusiveMinimum": -1000,
                                                         "exclusiveMaximum": 1000},
                                               "name": {"type": "string"},
                                               "unit": {"enum": ["celsius", "fahrenheit"]}},
              "required": ["input", "name", "unit"]}
    lit = Literals.of("What is magic_function(3) for 'Zoë Ltd' in Fahrenheit? (not 5000)")
    v = ValueGenerator(schema, random.Random(0), WORDS, lit).value()
    assert v == {"input": 3, "name": "Zoë Ltd", "unit": "fahrenheit"}
    # An apostrophe is not a quote.
    assert Literals.of("What's the weather in \"Paris\"?").strings == ["Paris"]


def test_bad_schemas_are_refused() -> None:
    for bad in ({"$ref": "#/$defs/Missing"}, {"$ref": "http://x/y"}, {"type": "strange"}, False, 3,
                {"type": "integer", "minimum": 5, "maximum": 4}):
        with pytest.raises(SchemaError):
            ValueGenerator(bad, random.Random(0), WORDS).value()


WEATHER = Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]})
MAGIC = Tool("magic_function", {"type": "object", "properties": {"input": {"type": "integer"}},
                                "required": ["input"]})


def spec(text: str, **kw: Any) -> AgentSpec:
    return AgentSpec(tools=(WEATHER, MAGIC), last_user=text, **kw)


def test_tool_choice_decides_deterministically() -> None:
    rng = random.Random(0)
    assert named_tools(spec("magic_function(2) and then the weather")) == [MAGIC, WEATHER]
    assert tools_to_call(spec("Hello there"), rng) == []  # auto, nothing named: it answers
    assert tools_to_call(spec("weather in 'Oslo'?"), rng) == [WEATHER]
    assert tools_to_call(spec("weather in 'Oslo'?", last_role="tool"), rng) == []  # after a result
    assert tools_to_call(spec("weather?", choice="none"), rng) == []
    assert len(tools_to_call(spec("Hello", choice="required"), rng)) == 1
    assert tools_to_call(spec("weather", choice="function", forced="magic_function"), rng) == [MAGIC]
    both = spec("weather and magic_function", parallel=False)
    assert tools_to_call(both, rng) == [WEATHER]


def test_tool_call_tokens_are_counted_and_cut_by_max_tokens() -> None:
    prompt = TOK.encode("weather in 'Oslo' and magic_function(7)")
    s = spec("weather in 'Oslo' and magic_function(7)")
    gen = agent_generate(TOK, s, prompt, 200, seed=0)
    assert gen is not None and gen.finish_reason == "tool_calls" and gen.token_ids[-1] == eos_token_id(TOK)
    calls = gen.tool_calls()
    assert [c["function"]["name"] for c in calls] == ["get_weather", "magic_function"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {"input": 7}]
    assert gen.text == "" and TOK.decode(gen.token_ids[:-1]).count("<tool_call>") == 2
    # Streamed deltas rebuild the same calls: an opening (id, type, name, "") then fragments.
    rebuilt: dict[int, dict[str, Any]] = {}
    for i in range(len(gen.token_ids)):
        for d in gen.call_deltas(i):
            if "id" in d:
                assert d["function"]["arguments"] == "" and d["type"] == "function"
                rebuilt[d["index"]] = {"id": d["id"], "type": "function",
                                       "function": {"name": d["function"]["name"], "arguments": ""}}
            else:
                rebuilt[d["index"]]["function"]["arguments"] += d["function"]["arguments"]
    assert [rebuilt[k] for k in sorted(rebuilt)] == calls
    cut = agent_generate(TOK, s, prompt, len(gen.token_ids) - 8, seed=0)
    assert cut is not None and cut.finish_reason == "length" and len(cut.token_ids) == len(gen.token_ids) - 8
    assert [c["function"]["name"] for c in cut.tool_calls()] == ["get_weather", "magic_function"]
    with pytest.raises(ValueError):
        json.loads(cut.tool_calls()[1]["function"]["arguments"])  # truncated, as a real engine's


def test_json_output_pieces_keep_unicode_whole_and_stop_strings_apply() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    s = AgentSpec(response_format="json_schema", schema=schema, last_user="name it 'こんにちは株式会社'")
    prompt = TOK.encode("x")
    gen = agent_generate(TOK, s, prompt, 100, seed=3)
    assert gen is not None and json.loads(gen.text) == {"name": "こんにちは株式会社"}
    assert "\ufffd" not in "".join(gen.pieces) and gen.finish_reason == "stop"
    ids = TOK.encode("é😀ü")
    assert "".join(pieces_of(TOK, ids)) == "é😀ü"
    stopped = agent_generate(TOK, s, prompt, 100, seed=3, stop=["株式"])
    assert stopped is not None and stopped.text == '{"name":"こんにちは' and stopped.matched_stop == "株式"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimThread]:
    with start_sim_thread(SimConfig(time_scale=0.01, eos_after=(4, 12))) as t:
        yield t


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER.parameters}},
         {"type": "function", "function": {"name": "magic_function", "parameters": MAGIC.parameters}}]


def _chat(t: SimThread, **body: Any) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "What is the weather in 'Lyon'?"}])
    return httpx.post(t.url + "/v1/chat/completions", json=body, timeout=30)


def _stream(t: SimThread, **body: Any) -> list[dict[str, Any]]:
    r = _chat(t, stream=True, stream_options={"include_usage": True}, **body)
    lines = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_engine_answers_tool_calls_and_json_over_http(sim: SimThread) -> None:
    r = _chat(sim, tools=TOOLS).json()
    c = r["choices"][0]
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    assert json.loads(c["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Lyon"}
    assert r["usage"]["completion_tokens"] > 10  # the call's text is generated output
    assert _chat(sim, tools=TOOLS, tool_choice="none").json()["choices"][0]["finish_reason"] == "stop"
    # Streamed: the same calls, the same token count.
    chunks = _stream(sim, tools=TOOLS)
    deltas = [tc for ch in chunks for ch0 in ch["choices"] for tc in ch0["delta"].get("tool_calls") or []]
    assert deltas[0]["id"] == c["message"]["tool_calls"][0]["id"] and deltas[0]["function"]["name"]
    assert "".join(d["function"]["arguments"] for d in deltas) == c["message"]["tool_calls"][0]["function"][
        "arguments"]
    assert chunks[-1]["usage"]["completion_tokens"] == r["usage"]["completion_tokens"]
    assert [f for ch in chunks for x in ch["choices"] if (f := x["finish_reason"])] == ["tool_calls"]
    # A tool result gets a text answer; n and seed give distinct, repeatable calls.
    history = [{"role": "user", "content": "What is the weather in 'Lyon'?"}, c["message"],
               {"role": "tool", "tool_call_id": c["message"]["tool_calls"][0]["id"], "content": "sunny"}]
    final = _chat(sim, tools=TOOLS, messages=history).json()["choices"][0]
    assert final["finish_reason"] == "stop" and final["message"]["content"]
    many = _chat(sim, tools=TOOLS, tool_choice="required", n=3, seed=5,
                 messages=[{"role": "user", "content": "hi"}]).json()
    assert many == {**many, "choices": _chat(sim, tools=TOOLS, tool_choice="required", n=3, seed=5,
                                             messages=[{"role": "user", "content": "hi"}]).json()["choices"]}
    assert len({json.dumps(x["message"]["tool_calls"][0]["function"]) for x in many["choices"]}) > 1
    # response_format: JSON that validates; cut by max_tokens it reports "length".
    schema = Person.model_json_schema()
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    out = _chat(sim, response_format=rf, max_tokens=2000).json()["choices"][0]
    jsonschema.validate(json.loads(out["message"]["content"]), schema)
    short = _chat(sim, response_format=rf, max_tokens=5).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 5
    assert out["message"]["content"].startswith(short["choices"][0]["message"]["content"])
    obj = _chat(sim, response_format={"type": "json_object"}).json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(obj), dict)
    gen = httpx.post(sim.url + "/generate", json={"text": "A person:", "sampling_params": {
        "max_new_tokens": 2000, "json_schema": json.dumps(schema)}}).json()
    jsonschema.validate(json.loads(gen["text"]), schema)
    # An unknown field changes nothing.
    assert _chat(sim, tools=TOOLS, seed=1, x_unknown={"a": 1}).json()["choices"] == _chat(
        sim, tools=TOOLS, seed=1).json()["choices"]


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/x"}}}},
     None),
])
def test_bad_agent_requests_are_400(sim: SimThread, body: dict[str, Any], param: str | None) -> None:
    r = _chat(sim, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_openai_api_mode_has_no_sglang_routes_or_fields() -> None:
    with start_sim_thread(SimConfig(time_scale=0.01, eos_after=(4, 12), api="openai")) as t:
        for path in ("/generate", "/get_server_info", "/get_load", "/flush_cache", "/get_model_info"):
            assert httpx.post(t.url + path, json={}).status_code in (404, 405), path
        r = _chat(t, rid="mine", max_tokens=3).json()
        assert r["id"] != "mine" and "prompt_tokens_details" not in r["usage"]
        assert "matched_stop" not in r["choices"][0]
        chunks = _stream(t, tools=TOOLS)
        assert all("matched_stop" not in c for ch in chunks for c in ch["choices"])
        assert "prompt_tokens_details" not in chunks[-1]["usage"]
        assert httpx.get(t.url + "/v1/models").status_code == 200
