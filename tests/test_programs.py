"""Program inference (analysis.programs) on message sequences recorded from real clients.

The OpenAI SDK and LangChain run in-process against an ``httpx.MockTransport``
that plays a scripted model, so the request bodies are exactly what those
clients send (how they echo an answer back: ``refusal: null``, content null
beside tool calls, re-serialised arguments ...); the AutoGen-like group chat is
written out by hand following AutoGen's conventions (each agent sees its own
messages as ``assistant`` and the others' as ``user`` with a ``name``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from analysis.programs import (
    AMBIGUOUS,
    ProgramTable,
    answer_keys,
    assistant_messages,
    canonical_message,
    identify,
)

pytestmark = pytest.mark.timeout(60)

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a fact up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]


class Recorder:
    """A scripted chat model behind a mock transport: answers with tool calls while
    ``tool_steps`` says so, else with text; keeps every request body and answer."""

    def __init__(self, tool_steps: int = 2, parallel: int = 1) -> None:
        self.tool_steps = tool_steps
        self.parallel = parallel
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._ids = itertools.count()

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        msgs = body["messages"]
        done_tools = sum(1 for m in msgs if m.get("role") == "assistant" and m.get("tool_calls"))
        n = next(self._ids)
        if body.get("tools") and done_tools < self.tool_steps:
            calls = [{"id": f"call_{n}_{j}", "type": "function",
                      "function": {"name": "lookup", "arguments": json.dumps({"q": f"fact {n}.{j}"},
                                                                             separators=(",", ":"))}}
                     for j in range(self.parallel)]
            message = {"role": "assistant", "content": None, "tool_calls": calls, "refusal": None}
            finish = "tool_calls"
        else:
            last = msgs[-1].get("content") or ""
            message = {"role": "assistant", "refusal": None,
                       "content": f"Answer {n} to: {str(last)[:40]} - with enough words to be distinctive."}
            finish = "stop"
        resp = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                          "prompt_tokens_details": {"cached_tokens": 60}}}
        self.calls.append((body, resp))
        return httpx.Response(200, json=resp)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="x", base_url="http://model.test/v1", max_retries=0,
                             http_client=httpx.Client(transport=httpx.MockTransport(self.handler)))


def replay(calls: list[tuple[dict[str, Any], dict[str, Any]]], table: ProgramTable | None = None,
           hint: Callable[[dict[str, Any]], str | None] = lambda b: None) -> list[tuple[str, str]]:
    """Run recorded (request, answer) pairs through inference in order: (program, reason) each."""
    table = table or ProgramTable()
    out = []
    ids = itertools.count()
    for body, resp in calls:
        q = identify(body.get("messages"), user=body.get("user"), hint=hint(body))
        link = table.link(q, f"p{next(ids)}", 0.0)
        u = resp.get("usage") or {}
        table.done(link.program, answer_keys(q, assistant_messages(resp)), u.get("prompt_tokens", 0),
                   0, u.get("completion_tokens", 0), "e0", 0.0)
        out.append((link.program, link.reason))
    return out


# ------------------------------------------------------------------ canonical form


def test_canonical_form_ignores_what_clients_change() -> None:
    server = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"b":1,"a":"é"}'}}]}
    langchain = {"role": "assistant", "content": "", "name": "agent", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": "\\u00e9", "b": 1}'}}]}
    assert canonical_message(server) == canonical_message(langchain)
    parts = {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}
    assert canonical_message(parts) == canonical_message({"role": "user", "content": "hello"})
    # what makes messages different still does
    assert canonical_message({"role": "user", "content": "a"}) != canonical_message(
        {"role": "assistant", "content": "a"})
    img = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:1"}}]}
    img2 = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:2"}}]}
    assert canonical_message(img) != canonical_message(img2)
    assert canonical_message({"role": "tool", "tool_call_id": "x", "content": "1"}) != canonical_message(
        {"role": "tool", "tool_call_id": "y", "content": "1"})


# ------------------------------------------------------------------ OpenAI SDK loops


def sdk_tool_loop(rec: Recorder, task: str, system: str = "You are a helpful agent.") -> None:
    """The canonical OpenAI SDK agent loop: append the answer, run its tools, ask again."""
    client = rec.openai()
    messages: list[Any] = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    for _ in range(10):
        r = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        msg = r.choices[0].message
        messages.append(msg)  # the SDK's own object, as the docs show
        if not msg.tool_calls:
            return
        for tc in msg.tool_calls:
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": f"result of {tc.id}"})


def test_openai_sdk_tool_loop_is_one_program() -> None:
    rec = Recorder(tool_steps=3)
    sdk_tool_loop(rec, "Find three facts about rivers.")
    links = replay(rec.calls)
    assert len(links) == 4
    assert {p for p, _ in links} == {links[0][0]}
    assert [r for _, r in links] == ["new", "chain", "chain", "chain"]


def test_parallel_tool_calls_and_two_interleaved_runs() -> None:
    """Two runs of the same agent with the same system prompt, steps interleaved: two programs."""
    a, b = Recorder(tool_steps=2, parallel=3), Recorder(tool_steps=2, parallel=3)
    sdk_tool_loop(a, "Task A: list the largest lakes.")
    sdk_tool_loop(b, "Task B: list the longest bridges.")
    merged = [c for pair in itertools.zip_longest(a.calls, b.calls) for c in pair if c]
    links = replay(merged)
    progs_a = {p for p, _ in links[0::2]}
    progs_b = {p for p, _ in links[1::2]}
    assert len(progs_a) == 1 and len(progs_b) == 1 and progs_a != progs_b


def test_tool_message_continues_the_program_that_called_the_tool() -> None:
    """The transcript was rewritten (history trimmed), so the chain breaks; the tool
    result still names the call, and so the program."""
    rec = Recorder(tool_steps=1)
    client = rec.openai()
    messages: list[Any] = [{"role": "system", "content": "Agent."}, {"role": "user", "content": "go"}]
    r = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    trimmed = [{"role": "user", "content": "go (summarised history)"},
               {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    trimmed[1]["tool_calls"][0]["function"]["arguments"] = '{"q": "changed"}'  # no chain match
    client.chat.completions.create(model="m", messages=trimmed, tools=TOOLS)
    links = replay(rec.calls)
    assert links[1] == (links[0][0], "tool")


def test_multi_turn_chat_with_stream_answers_echoed_as_text() -> None:
    rec = Recorder()
    client = rec.openai()
    messages: list[Any] = [{"role": "system", "content": "You are a friendly assistant."}]
    for turn in ("Hello there", "Tell me about tides", "And about waves?"):
        messages.append({"role": "user", "content": turn})
        r = client.chat.completions.create(model="m", messages=messages)
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    links = replay(rec.calls)
    assert [r for _, r in links] == ["new", "chain", "chain"]
    assert len({p for p, _ in links}) == 1


# ------------------------------------------------------------------ LangChain


def test_langchain_react_loop_is_one_program() -> None:
    """LangGraph's prebuilt ReAct agent loop, spelled out: model with bound tools,
    AIMessage appended, one ToolMessage per call, ask again."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    rec = Recorder(tool_steps=2, parallel=2)
    llm = ChatOpenAI(model="m", api_key="x", base_url="http://model.test/v1", max_retries=0,
                     http_client=httpx.Client(transport=httpx.MockTransport(rec.handler)))
    agent = llm.bind_tools(TOOLS)
    messages: list[Any] = [SystemMessage("You are a research agent."), HumanMessage("Compare two rivers.")]
    for _ in range(5):
        ai = agent.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        for tc in ai.tool_calls:
            messages.append(ToolMessage(content=f"found {tc['args']}", tool_call_id=tc["id"]))
    # LangChain re-serialises the arguments ({"q": ...} with a space): still the chain
    sent = rec.calls[1][0]["messages"][2]["tool_calls"][0]["function"]["arguments"]
    assert sent != rec.calls[0][1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    links = replay(rec.calls)
    assert [r for _, r in links] == ["new", "chain", "chain"]
    assert len({p for p, _ in links}) == 1


# ------------------------------------------------------------------ AutoGen-like group chat


def test_group_chat_agents_sharing_a_transcript_are_one_program() -> None:
    """Three agents with their own system prompts take turns; each sees its own messages
    as ``assistant`` and the others' as ``user`` with a ``name``; a selector call (the
    manager) picks the next speaker from the whole transcript."""
    agents = {"planner": "You plan the work.", "coder": "You write the code.", "critic": "You review."}
    transcript: list[tuple[str, str]] = [("user", "Build a CLI that counts words in files.")]
    calls = []
    n = itertools.count()
    for speaker in ["planner", "coder", "critic", "coder", "critic"]:
        selector = [{"role": "system", "content": "Select the next speaker."}] + [
            {"role": "user", "name": who, "content": text} for who, text in transcript]
        pick = {"choices": [{"message": {"role": "assistant", "content": speaker}}]}
        calls.append(({"messages": selector}, pick))
        msgs = [{"role": "system", "content": agents[speaker]}] + [
            {"role": "assistant", "content": text} if who == speaker else
            {"role": "user", "name": who, "content": text} for who, text in transcript]
        reply = f"{speaker} turn {next(n)}: " + "a long and specific contribution " * 3
        answer = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
        calls.append(({"messages": msgs}, answer))
        transcript.append((speaker, reply))
    links = replay(calls)
    # The first selector call sees only the user's task, which no model wrote, and its
    # answer (a name) is too short to identify: it stays a program of its own. Every
    # later call carries an answer of the group, and joins it.
    assert len({p for p, _ in links[1:]}) == 1, links
    assert links[0][0] != links[1][0]
    assert {r for _, r in links[2:]} <= {"chain", "content"}


# ------------------------------------------------------------------ hints, users, ambiguity


def test_hint_names_the_program_and_user_links_new_conversations() -> None:
    t = ProgramTable()
    q = identify([{"role": "user", "content": "x"}], hint="my-run")
    assert t.link(q, "p1", 0.0).program == "my-run"
    u1 = t.link(identify([{"role": "user", "content": "first"}], user="alice"), "p2", 0.0)
    u2 = t.link(identify([{"role": "user", "content": "other chat"}], user="alice"), "p3", 1.0)
    assert (u1.reason, u2.reason, u2.program) == ("new", "user", u1.program)
    assert t.link(identify([{"role": "user", "content": "bob"}], user="bob"), "p4", 1.0).reason == "new"


def test_identical_conversations_never_merge() -> None:
    """Two users send the same opener and get the same answer (temperature 0): the
    continuation key is claimed twice, so it links nobody."""
    opener = [{"role": "system", "content": "Shared system prompt."}, {"role": "user", "content": "Hi"}]
    answer = {"choices": [{"message": {"role": "assistant", "content": "Hello! How can I help you today?"}}]}
    t = ProgramTable()
    qa, qb = identify(opener), identify(opener)
    la, lb = t.link(qa, "A", 0), t.link(qb, "B", 0)
    t.done(la.program, answer_keys(qa, assistant_messages(answer)), 1, 0, 1, None, 0)
    t.done(lb.program, answer_keys(qb, assistant_messages(answer)), 1, 0, 1, None, 0)
    assert AMBIGUOUS in t.keys.values()
    nxt = identify([*opener, answer["choices"][0]["message"], {"role": "user", "content": "More"}])
    assert t.link(nxt, "C", 1).reason == "new"


def test_attained_service_and_last_engine() -> None:
    t = ProgramTable()
    q = identify([{"role": "user", "content": "x"}])
    link = t.link(q, "P", 0.0)
    t.done("P", (), 100, 60, 20, "e1", 1.0)
    t.done("P", (), 150, 120, 30, "e2", 2.0)
    rec = t.records["P"]
    assert rec.attained == (100 - 60) + 20 + (150 - 120) + 30
    assert (rec.last_engine, rec.context_tokens, rec.steps, link.record.started) == ("e2", 180, 1, 0.0)


def test_probes_are_bounded_and_ordered() -> None:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "s" * 100}]
    for i in range(40):
        msgs.append({"role": "user", "content": f"question {i} " * 10})
        msgs.append({"role": "assistant", "content": None,
                     "tool_calls": [{"id": f"c{i}", "function": {"name": "f", "arguments": "{}"}}]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "r"})
    q = identify(msgs, user="u")
    kinds = [p.kind for p in q.probes]
    # content probes look at the latest 8 messages only (2 user questions among them)
    assert kinds == ["chain"] * 16 + ["tool"] * 16 + ["content"] * 2 + ["user"]
    assert identify(None).probes == () and identify([]).probes == ()
    assert [p.kind for p in identify(None, user="u").probes] == ["user"]
