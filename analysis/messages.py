"""OpenAI message content, read as text (shared by prefix identity and chat templates)."""

from __future__ import annotations

from typing import Any


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
