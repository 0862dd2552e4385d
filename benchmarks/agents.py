"""The ``agents`` workload: unmodified OpenAI-API clients running tool loops and chats.

No headers, no sessions: each application is what a team would point at the
gateway without changing a line.

* **agent** (a tool-using loop, as the OpenAI SDK docs and LangGraph's ReAct
  agent write it): a persona's system prompt (shared by every run of that
  persona) and its tools, a task; each step the model is asked with
  ``tools`` and ``tool_choice: "required"``, its message is appended as
  returned, one ``role: tool`` result per call follows; the last step asks
  with ``tool_choice: "none"`` for the answer. An engine that does not call
  tools (no tool parser) answers in text: the client then appends the tool's
  output as the next user message ("Observation: ..."), so the transcript
  grows the same way.
* **chat** (multi-turn): a shared system prompt, the user's turns one after
  the other, each answer appended before the next turn.

Program lengths are heavy-tailed (most chats are short, agents take several
steps), as in traces of agentic serving. Requests carry what the SDK sends
(``model``, ``messages``, ``max_tokens``, ``temperature``, ``tools``,
``tool_choice``) plus SGLang's ``ignore_eos`` so answers have their planned
length on every system; ``tests/test_bench_agents.py`` checks the bodies
against the real ``openai`` SDK. The load generator sends them with its lean
HTTP client (the SDK's per-request CPU would make the harness lag at the
rates that saturate the engines).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

PERSONAS = ("research", "support", "coding", "travel")
TOOLS: dict[str, tuple[str, ...]] = {
    "research": ("web_search", "read_page", "calculator"),
    "support": ("lookup_order", "refund_order", "search_faq"),
    "coding": ("run_tests", "read_file", "grep_repository"),
    "travel": ("search_flights", "search_hotels", "get_weather"),
}


@dataclass(frozen=True)
class Turn:
    """One model call of a script: ``tool`` (the model calls tools, their results follow),
    ``answer`` (the final answer of an agent) or ``chat`` (a user turn and its answer)."""

    kind: str
    max_tokens: int
    text: str = ""
    """chat: the user's message; tool: the tools' output (split between the calls)."""


@dataclass(frozen=True)
class Script:
    """One program: its opening messages, tools and turns."""

    system: str
    task: str  # agents: the task; chats: the first user message
    turns: tuple[Turn, ...]
    tools: tuple[dict[str, Any], ...] = ()

    @property
    def output_tokens(self) -> int:
        return sum(t.max_tokens for t in self.turns)


def tool_spec(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": f"{name.replace('_', ' ').capitalize()}.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]}}}


Call = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends one request body, returns the response body (raises on an error status)."""


def body_of(script: Script, messages: list[dict[str, Any]], turn: Turn, model: str) -> dict[str, Any]:
    """The request an SDK client sends for ``turn`` (keys in the SDK's order)."""
    body: dict[str, Any] = {"messages": [dict(m) for m in messages], "model": model,
                            "max_tokens": turn.max_tokens, "temperature": 0.0}
    if script.tools:
        body["tool_choice"] = "required" if turn.kind == "tool" else "none"
        body["tools"] = list(script.tools)
    body["ignore_eos"] = True  # SGLang's extra field (extra_body): planned answer lengths
    return body


def opening(script: Script) -> list[dict[str, Any]]:
    return [{"role": "system", "content": script.system}, {"role": "user", "content": script.task}]


def advance(messages: list[dict[str, Any]], script: Script, i: int, reply: dict[str, Any]) -> None:
    """Append the answer to turn ``i`` as the client would, then what comes before turn ``i+1``."""
    message = reply["choices"][0]["message"]
    messages.append(message)  # as returned (the SDK echoes the fields the server set)
    turn = script.turns[i]
    if turn.kind == "tool":
        calls = message.get("tool_calls") or []
        if calls:
            parts = _split(turn.text, len(calls))
            for call, part in zip(calls, parts):
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": part})
        else:
            messages.append({"role": "user", "content": "Observation: " + turn.text})
    if i + 1 < len(script.turns) and script.turns[i + 1].kind == "chat":
        messages.append({"role": "user", "content": script.turns[i + 1].text})


def _split(text: str, n: int) -> list[str]:
    words = text.split(" ")
    k = max(1, len(words) // n)
    return [" ".join(words[j * k: (j + 1) * k if j < n - 1 else len(words)]) for j in range(n)]


async def run_script(script: Script, model: str, call: Call,
                     on_step: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Run the program turn by turn through ``call``; the final transcript."""
    messages = opening(script)
    for i, turn in enumerate(script.turns):
        body = body_of(script, messages, turn, model)
        reply = await call(body)
        if on_step is not None:
            on_step(i, body, reply)
        advance(messages, script, i, reply)
    return messages


# ------------------------------------------------------------------ generation

SIZES: dict[str, dict[str, float]] = {
    # share of agent programs; tokens of: persona prompt, chat system prompt, task, tool output
    # per step, tool-call budget, final answer, chat user turn, chat answer; most steps/turns.
    # Lengths are fixed per kind and only the number of steps varies, so a workload has a
    # few dozen shapes (the bound is measured once per shape).
    "full": {"agent_share": 0.5, "persona": 1200, "chat_system": 500, "task": 80, "tool_out": 300,
             "call": 48, "answer": 160, "user": 60, "reply": 192, "agent_steps_max": 12,
             "chat_turns_max": 8},
    "small": {"agent_share": 0.5, "persona": 300, "chat_system": 160, "task": 32, "tool_out": 96,
              "call": 32, "answer": 48, "user": 24, "reply": 64, "agent_steps_max": 6,
              "chat_turns_max": 4},
}


def _heavy_tailed(rng: random.Random, top: int) -> int:
    """1..top, most programs short (a truncated geometric tail, mean ~2.5)."""
    n = 1
    while n < top and rng.random() < 0.6:
        n += 1
    return n


def make_script(i: int, seed: int, size: str, text: Callable[[int, int], str],
                seed_of: Callable[..., int]) -> tuple[str, Script]:
    """The ``i``-th program: (kind, script). ``text(tokens, seed)`` makes synthetic text."""
    p = SIZES[size]
    rng = random.Random(seed_of(seed, "agents", size, i))
    if rng.random() < p["agent_share"]:
        persona = PERSONAS[i % len(PERSONAS)]
        system = (f"You are a {persona} agent. Use the tools to gather what you need, then answer.\n\n"
                  + text(int(p["persona"]), seed_of("persona", persona)))
        tools = tuple(tool_spec(n) for n in TOOLS[persona])
        names = " and ".join(TOOLS[persona][:2])
        task = f"Task {i}: use {names}. " + text(int(p["task"]), seed_of(seed, "task", i))
        steps = 1 + _heavy_tailed(rng, int(p["agent_steps_max"]) - 1)
        turns = [Turn("tool", int(p["call"]), text(int(p["tool_out"]), seed_of(seed, "obs", i, k)))
                 for k in range(steps - 1)]
        turns.append(Turn("answer", int(p["answer"])))
        return "agent", Script(system, task, tuple(turns), tools)
    which = i % 4
    system = "You are a friendly assistant.\n\n" + text(int(p["chat_system"]), seed_of("chat-system", which))
    n = _heavy_tailed(rng, int(p["chat_turns_max"]))
    users = [f"Question {k} of {i}: " + text(int(p["user"]), seed_of(seed, "user", i, k)) for k in range(n)]
    turns = [Turn("chat", int(p["reply"]), u) for u in users]
    return "chat", Script(system, users[0], tuple(turns))


def script_shape(kind: str, size: str, script: Script) -> str:
    """Equal shapes, equal lengths: the bound is measured once per shape."""
    return f"agents-{kind}:{size}:{len(script.turns)}"


def describe(script: Script) -> str:
    return json.dumps({"turns": [t.kind for t in script.turns], "tools": len(script.tools)})
