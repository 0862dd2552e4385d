"""The gateway's wire contract for clients (SPEC sections 3-4): header names, paths,
request bodies and answers. Pure code shared by the sync and async sessions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from ._template import is_valid_name

H_SESSION = "X-Parrot-Session"
H_OUTPUT = "X-Parrot-Output"
H_ASYNC = "X-Parrot-Async"
H_CRITERIA = "X-Parrot-Criteria"
H_TIMEOUT = "X-Parrot-Timeout"

MAX_WAIT_S = 60.0  # the gateway's long-poll limit per GET
POLL_SLACK_S = 10.0  # HTTP timeout beyond the server-side wait
SESSION_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

Criteria = Literal["latency", "throughput"]
Status = Literal["pending", "ready", "failed"]
Messages = Union[str, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class VariableState:
    """One answer of ``GET /v1/sessions/{sid}/variables/{name}``."""

    name: str
    status: Status
    value: str | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariableState:
        status = data.get("status")
        if status not in ("pending", "ready", "failed"):
            raise ValueError(f"unexpected variable status {status!r}")
        return cls(str(data.get("name", "")), status, data.get("value"), data.get("error"))


def new_session_id() -> str:
    return "s-" + uuid.uuid4().hex[:20]


def check_session_id(sid: str) -> str:
    if not isinstance(sid, str) or SESSION_RE.fullmatch(sid) is None:
        raise ValueError(f"session id must match [A-Za-z0-9_.-]{{1,128}}, got {sid!r}")
    return sid


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise ValueError(f"variable name must match [A-Za-z_][A-Za-z0-9_]{{0,63}}, got {name!r}")
    return name


def check_criteria(criteria: str | None) -> str | None:
    if criteria not in (None, "latency", "throughput"):
        raise ValueError(f"criteria must be 'latency' or 'throughput', got {criteria!r}")
    return criteria


def name_prefix(hint: str) -> str:
    """A valid variable-name prefix derived from ``hint`` (e.g. a function name)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", hint)[:48] or "v"
    return cleaned if not cleaned[0].isdigit() else "v_" + cleaned[:46]


def variable_path(sid: str, name: str) -> str:
    return f"sessions/{sid}/variables/{name}"


def session_path(sid: str) -> str:
    return f"sessions/{sid}"


def headers(
    sid: str,
    *,
    output: str | None = None,
    is_async: bool = False,
    criteria: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, str]:
    """The X-Parrot-* headers of one request of session ``sid``."""
    out = {H_SESSION: sid}
    if output is not None:
        out[H_OUTPUT] = check_name(output)
    if is_async:
        if output is None:
            raise ValueError("an async request needs an output variable name")
        out[H_ASYNC] = "1"
    if check_criteria(criteria) is not None:
        out[H_CRITERIA] = str(criteria)
    if timeout_s is not None:
        out[H_TIMEOUT] = f"{timeout_s:g}"
    return out


def as_messages(messages: Messages) -> list[dict[str, Any]]:
    """A ``str`` is one user message; a list of message mappings is copied as is."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def poll_slices(timeout: float | None, elapsed: float) -> float | None:
    """Seconds to ask the server to wait next, or None when the client's timeout is spent.

    ``timeout`` None waits until the server settles the variable (its session
    deadline bounds that), in slices of at most 60 s.
    """
    if timeout is None:
        return MAX_WAIT_S
    remaining = timeout - elapsed
    if remaining <= 0:
        return None
    return min(MAX_WAIT_S, remaining)


def completion_text(completion: Any) -> str:
    """Choice 0's content of an OpenAI chat completion (``""`` when empty)."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        return ""
    message = getattr(choices[0], "message", None)
    return getattr(message, "content", None) or ""
