"""A Llama-3 style chat template, rendered to text.

The gateway and the simulated engine render messages identically, so a shared
system prompt becomes a shared token prefix, as it does on a real engine.
"""

from __future__ import annotations

from typing import Any, Iterable

from .messages import content_text

BOS = "<|begin_of_text|>"
HEADER = "<|start_header_id|>{role}<|end_header_id|>\n\n"
EOT = "<|eot_id|>"


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
