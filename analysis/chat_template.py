"""A Llama-3 style chat template, rendered to text.

The gateway and the simulated engine render messages identically, so a shared
system prompt becomes a shared token prefix, as it does on a real engine.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .messages import content_text

BOS = "<|begin_of_text|>"
HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
EOT = "<|eot_id|>"


def tool_call_text(call: Any) -> str:
    """How an assistant's tool call reads in the prompt (Hermes/Qwen style, as models emit it)."""
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    args = fn.get("arguments")
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return '<tool_call>\n{"name": ' + json.dumps(str(fn.get("name", "")), ensure_ascii=False) + \
        ', "arguments": ' + args + "}\n</tool_call>"


def render_chat(messages: Iterable[dict[str, Any]], add_generation_prompt: bool = True,
                tools: list[Any] | None = None) -> str:
    """The prompt text; ``tools`` (OpenAI tool definitions) open it as a system block and an
    assistant message's ``tool_calls`` follow its content."""
    out = [BOS]
    if tools:
        out.append(HEADER.format(role="system"))
        out.append("Tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        out.append(EOT)
    for m in messages:
        role = str(m.get("role", "user"))
        out.append(HEADER.format(role=role))
        out.append(content_text(m.get("content")))
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            out.append("\n".join(tool_call_text(c) for c in calls))
        out.append(EOT)
    if add_generation_prompt:
        out.append(HEADER.format(role="assistant"))
    return "".join(out)
