"""The agents workload: what its clients send (checked against the real OpenAI SDK) and a
CI-sized run through the harness with program inference on and off."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from benchmarks.agents import Script, Turn, run_script, tool_spec
from benchmarks.workloads import build_workload

pytestmark = pytest.mark.timeout(120)


def canned(body: dict[str, Any], n: int) -> dict[str, Any]:
    """A model: tool calls when the request requires them, text otherwise."""
    if body.get("tool_choice") == "required":
        calls = [{"id": f"call_{n}_{j}", "type": "function",
                  "function": {"name": "web_search", "arguments": '{"query":"q"}'}} for j in range(2)]
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": calls}
    else:
        message = {"role": "assistant", "content": f"answer {n}"}
    return {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


SCRIPTS = [
    Script("persona", "task", (Turn("tool", 32, "one two three four"), Turn("tool", 32, "five six"),
                               Turn("answer", 48)), (tool_spec("web_search"), tool_spec("read_page"))),
    Script("system", "first question", (Turn("chat", 16, "first question"), Turn("chat", 16, "second"))),
]


@pytest.mark.parametrize("script", SCRIPTS, ids=["agent", "chat"])
def test_the_harness_sends_what_the_openai_sdk_sends(script: Script) -> None:
    ours: list[dict[str, Any]] = []

    async def lean(body: dict[str, Any]) -> dict[str, Any]:
        ours.append(json.loads(json.dumps(body)))
        return canned(body, len(ours))

    asyncio.run(run_script(script, "m", lean))

    sdk_bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sdk_bodies.append(body)
        return httpx.Response(200, json=canned(body, len(sdk_bodies)))

    client = openai.OpenAI(api_key="x", base_url="http://m.test/v1", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    messages: list[Any] = [{"role": "system", "content": script.system},
                           {"role": "user", "content": script.task}]
    for i, turn in enumerate(script.turns):
        extra: dict[str, Any] = {}
        if script.tools:
            choice = "required" if turn.kind == "tool" else "none"
            extra = {"tools": list(script.tools), "tool_choice": choice}
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=turn.max_tokens,
                                           temperature=0.0, extra_body={"ignore_eos": True}, **extra)
        msg = r.choices[0].message
        messages.append(msg)  # the SDK's own object, as its docs show
        if turn.kind == "tool":
            for call, part in zip(msg.tool_calls or [], ("one two", "three four")):
                messages.append({"role": "tool", "tool_call_id": call.id, "content": part})
        if i + 1 < len(script.turns) and script.turns[i + 1].kind == "chat":
            messages.append({"role": "user", "content": script.turns[i + 1].text})
    if script.tools:  # the split of the tools' output between the calls differs by design
        for b in [*ours, *sdk_bodies]:
            for m in b["messages"]:
                if m.get("role") == "tool":
                    m["content"] = "<output>"
    assert ours == sdk_bodies


def test_workload_shapes() -> None:
    wl = build_workload("agents", "small", seed=2, apps=40, rate=4.0)
    kinds = {a.app.kind for a in wl.arrivals}
    assert kinds == {"agent", "chat"}
    assert all(a.app.script is not None and a.app.tenant == "default" for a in wl.arrivals)
    assert len({a.app.shape for a in wl.arrivals}) <= 12  # a few bound measurements
    agents = [a.app for a in wl.arrivals if a.app.kind == "agent"]
    assert all(a.script.tools and a.script.turns[-1].kind == "answer" for a in agents)
    assert max(len(a.script.turns) for a in wl.apps) > 2  # some long programs


def test_agents_short_run(tmp_path: Path) -> None:
    """CI-sized: 8 programs, three systems, time-scale 0.25 (labelled)."""
    from benchmarks.cli import main

    systems = "baseline,gateway-plain,gateway-plain-noinfer"
    rc = main(["agents", "--size", "small", "--time-scale", "0.25", "--apps", "8", "--rate", "4",
               "--systems", systems, "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    w = json.loads((tmp_path / "summary.json").read_text())["workloads"]["agents"]
    assert set(w["systems"]) == set(systems.split(","))
    for name, m in w["systems"].items():
        assert m["failed"] == 0, (name, m["errors"])
        assert m["requests"] > 8 and {"agent", "chat"} <= set(m["by_kind"])
    assert (tmp_path / "logs" / "gateway-plain-noinfer.log").exists()
