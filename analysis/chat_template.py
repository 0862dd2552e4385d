"""A Llama-3 style chat template, rendered to text.

The gateway and the simulated engine render messages identically, so a shared
system prompt becomes a shared token prefix, as it does on a real engine.
"""

from __future__ import annotations

from typing import Any, Iterable

BOS = "<|begin_of_text|>"
HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
EOT = "<|eot_id|>"


def content_text(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def render_chat(messages: Iterable[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    out = [BOS]
    for m in messages:
        role = str(m.get("role", "user"))
        out.append(HEADER.format(role=role))
        out.append(content_text(m.get("content")))
        out.append(EOT)
    if add_generation_prompt:
        out.append(HEADER.format(role="assistant"))
    return "".join(out)
