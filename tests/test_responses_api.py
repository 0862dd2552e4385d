"""``/v1/responses`` with the real OpenAI SDK: create (text, items, instructions, budget),
the streamed event sequence, function tools across turns, ``text.format`` json_schema,
``previous_response_id`` chains (the engine sees exactly the chained conversation), store
and delete, tenant isolation, OpenAI-shaped errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from analysis.chat_template import render_chat
from analysis.tokenizer import get_tokenizer
from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

KEY_A, KEY_B = "sk-resp-alpha-0123456789", "sk-resp-bravo-9876543210"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}}
CHAT_WEATHER = {"type": "function",
                "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "keys.yaml"
    keys.write_text(f"keys:\n  {KEY_A}: {{tenant: alpha}}\n  {KEY_B}: {{tenant: bravo}}\n")
    s = start_stack(redis_server.url, engines=2, time_scale=0.01, sim={"eos_after": (4, 16)},
                    api_keys=str(keys))
    yield s
    s.stop()


def sdk(stack: Stack, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)


def prompt_tokens(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """What the engine counts for these chat messages (its template and tokenizer)."""
    return len(get_tokenizer().encode(render_chat(messages, tools=tools)))


def test_create_retrieve_delete(stack: Stack) -> None:
    c = sdk(stack)
    r = c.responses.create(model="", input="Name a bird.", instructions="Be terse.")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.instructions == "Be terse." and r.model == "sim-llama-3-8b"
    assert r.usage is not None and r.usage.input_tokens == prompt_tokens(
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a bird."}])
    assert c.responses.retrieve(r.id).model_dump() == r.model_dump()
    items = httpx.get(f"{stack.url}/v1/responses/{r.id}/input_items",
                      headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert [i["content"][0]["text"] for i in items["data"]] == ["Name a bird."]
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    # The output budget cuts it: incomplete, for the documented reason.
    cut = c.responses.create(model="", input="Talk.", max_output_tokens=5, extra_body={"ignore_eos": True})
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 5


def test_previous_response_id_chains_the_conversation(stack: Stack) -> None:
    """Turn 2's prompt is turn 1's input and output plus the new input; instructions do not
    carry over (the engine's prompt-token count proves which messages it saw)."""
    c = sdk(stack)
    first = c.responses.create(model="", input="Name a bird.", instructions="Be terse.")
    second = c.responses.create(model="", input="And a fish?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    seen = [{"role": "user", "content": "Name a bird."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And a fish?"}]
    assert second.usage is not None and second.usage.input_tokens == prompt_tokens(seen)
    third = c.responses.create(model="", input=[{"role": "user", "content": "And a tree?"}],
                               previous_response_id=second.id, instructions="Answer in one word.")
    seen += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "And a tree?"}]
    assert third.usage is not None and third.usage.input_tokens == prompt_tokens(
        [{"role": "system", "content": "Answer in one word."}, *seen])
    unstored = c.responses.create(model="", input="Secret.", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model="", input="x", previous_response_id=unstored.id)
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_stream_event_sequence(stack: Stack) -> None:
    c = sdk(stack)
    with c.responses.stream(model="", input="Tell me about parrots.", instructions="Be brief.") as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * len(deltas),
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in deltas) == final.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0
    assert c.responses.retrieve(final.id).output_text == final.output_text
    # Raw create(stream=True) gives the same events.
    raw = list(c.responses.create(model="", input="Tell me about parrots.", stream=True))
    assert raw[0].type == "response.created" and raw[-1].type == "response.completed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_function_tools_across_turns(stack: Stack, stream: bool) -> None:
    c = sdk(stack)

    def create(**kw: Any) -> Any:
        if not stream:
            return c.responses.create(model="", tools=[WEATHER], **kw)
        with c.responses.stream(model="", tools=[WEATHER], **kw) as s:
            kinds = [e.type for e in s]
            final = s.get_final_response()
        if final.output[0].type == "function_call":
            assert kinds[2] == "response.output_item.added" and kinds[-3:] == [
                "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
            assert "response.function_call_arguments.delta" in kinds
        return final

    first = create(input="What is the weather in 'Lima'?")
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Lima"} and call.call_id.startswith("call_")
    second = create(previous_response_id=first.id,
                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}])
    assert second.output[0].type == "message" and second.output_text
    seen = [{"role": "user", "content": "What is the weather in 'Lima'?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 24C"}]
    assert second.usage is not None and second.usage.input_tokens == prompt_tokens(seen, [CHAT_WEATHER])
    # The same conversation given whole, as items, without the chain.
    whole = create(input=[{"role": "user", "content": "What is the weather in 'Lima'?"},
                          {"type": "function_call", "call_id": call.call_id, "name": "get_weather",
                           "arguments": call.arguments},
                          {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}])
    assert whole.usage is not None and whole.usage.input_tokens == second.usage.input_tokens
    forced = create(input="Hello", tool_choice={"type": "function", "name": "get_weather"})
    assert forced.output[0].type == "function_call"
    assert create(input="weather?", tool_choice="none").output[0].type == "message"


class Bird(BaseModel):
    name: str
    wingspan_cm: int
    colors: list[str]


def test_text_format_json_schema(stack: Stack) -> None:
    c = sdk(stack)
    schema = {**Bird.model_json_schema(), "additionalProperties": False}
    r = c.responses.create(model="", input="Describe a bird.", text={"format": {
        "type": "json_schema", "name": "bird", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text is not None and r.text.format.type == "json_schema"
    parsed = c.responses.parse(model="", input="Describe a bird.", text_format=Bird)
    assert isinstance(parsed.output_parsed, Bird)
    streamed = "".join(e.delta for e in c.responses.create(
        model="", input="Describe a bird.", stream=True,
        text={"format": {"type": "json_schema", "name": "bird", "schema": schema}})
        if e.type == "response.output_text.delta")
    jsonschema.validate(json.loads(streamed), schema)


def test_tenants_cannot_see_each_others_responses(stack: Stack) -> None:
    a, b = sdk(stack, KEY_A), sdk(stack, KEY_B)
    mine = a.responses.create(model="", input="my private note")
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.create(model="", input="continue", previous_response_id=mine.id)
    assert a.responses.retrieve(mine.id).id == mine.id  # still there for its owner
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, "sk-wrong").responses.retrieve(mine.id)


@pytest.mark.parametrize("body,status,param", [
    ({"model": ""}, 400, "input"),
    ({"input": 3}, 400, "input"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0]"),
    ({"input": [{"type": "mystery"}]}, 400, "input[0]"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"input": "x", "background": True}, 400, "background"),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, 400, "text.format.schema"),
    ({"input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"input": "x", "model": "no-such-model"}, 404, "model"),
])
def test_errors_are_openai_shaped(stack: Stack, body: dict[str, Any], status: int, param: str) -> None:
    r = httpx.post(stack.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    bad = httpx.get(stack.url + "/v1/responses/has%20space", headers={"Authorization": f"Bearer {KEY_A}"})
    assert bad.status_code == 404 and bad.json()["error"]["type"] == "not_found_error"


def test_metrics_count_the_route(stack: Stack) -> None:
    sdk(stack).responses.create(model="", input="count me")
    text = httpx.get(stack.url + "/metrics").text
    assert 'route="/v1/responses"' in text


def test_semantic_variables_on_responses(stack: Stack) -> None:
    """Placeholders in instructions and input, X-Parrot-Output, async answers whose stored
    response completes later, streaming held for inputs, and chains whose history stays literal."""
    c = sdk(stack)
    api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30)
    assert api.put("/v1/sessions/resp-s1/variables/topic", json={"value": "parrots"}).status_code == 200

    def sem(output: str, **extra: str) -> dict[str, str]:
        return {"X-Parrot-Session": "resp-s1", "X-Parrot-Output": output, **extra}

    essay = c.responses.create(model="", input="Write about {{topic}}.", instructions="You like {{topic}}.",
                               extra_headers=sem("essay"))
    assert (essay.model_extra or {})["parrot"]["status"] == "ready"
    assert essay.usage is not None and essay.usage.input_tokens == prompt_tokens(
        [{"role": "system", "content": "You like parrots."},
         {"role": "user", "content": "Write about parrots."}])
    assert api.get("/v1/sessions/resp-s1/variables/essay").json()["value"] == essay.output_text
    # Async: answered at once, in progress; the stored response completes by itself.
    summary = c.responses.create(model="", input="Summarize: {{essay}}", extra_headers=sem("summary", **{
        "X-Parrot-Async": "1"}))
    assert summary.status == "in_progress" and (summary.model_extra or {})["parrot"]["status"] == "pending"
    with c.responses.stream(model="", input="A title for: {{summary}}", extra_headers=sem("title")) as s:
        title = s.get_final_response()  # held until summary is ready, then streamed
    value = api.get("/v1/sessions/resp-s1/variables/summary?wait=30").json()
    assert value["status"] == "ready" and title.output_text
    assert api.get("/v1/sessions/resp-s1/variables/title").json()["value"] == title.output_text
    for _ in range(100):
        done = c.responses.retrieve(summary.id)
        if done.status != "in_progress":
            break
        time.sleep(0.05)
    assert done.status == "completed" and done.output_text == value["value"]
    # A chained semantic turn: earlier text with braces is literal, not a placeholder.
    plain = c.responses.create(model="", input="literal {{braces}} here")
    chained = c.responses.create(model="", input="now {{topic}}", previous_response_id=plain.id,
                                 extra_headers={"X-Parrot-Session": "resp-s1", "X-Parrot-Timeout": "5"})
    assert chained.status == "completed" and chained.usage is not None
    assert chained.usage.input_tokens == prompt_tokens(
        [{"role": "user", "content": "literal {{braces}} here"},
         {"role": "assistant", "content": plain.output_text}, {"role": "user", "content": "now parrots"}])
    then = c.responses.create(model="", input="more", previous_response_id=chained.id)
    assert then.usage is not None and then.usage.input_tokens == prompt_tokens(
        [{"role": "user", "content": "literal {{braces}} here"},
         {"role": "assistant", "content": plain.output_text}, {"role": "user", "content": "now parrots"},
         {"role": "assistant", "content": chained.output_text}, {"role": "user", "content": "more"}])
    bad = api.post("/v1/responses", json={"input": "x {{"}, headers={"X-Parrot-Session": "bad id!"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-parrot-session"
