"""Request parsing for SGLang's HTTP API: bodies in, :class:`Parsed` out. Pure.

Field names follow SGLang's OpenAI-compatible server (``rid``, ``priority``,
``ignore_eos``, ``no_stop_trim``, ``stop_token_ids``) and its native ``/generate``
(``sampling_params``, ``return_logprob``). The fields that change the output are
``max_tokens``/``max_completion_tokens``/``max_new_tokens``, ``n``, ``seed``/
``sampling_seed``, ``temperature`` (0 is greedy: the seed no longer matters),
``stop``, ``stop_token_ids``, ``no_stop_trim``, ``ignore_eos``, the logprob
requests, and on chat ``tools``/``tool_choice``/``parallel_tool_calls`` and
``response_format`` (``/generate``: ``sampling_params.json_schema``), which
:mod:`agent` turns into tool calls and JSON. Unknown fields are tolerated, as
SGLang does, and never change the output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from analysis.chat_template import content_text, render_chat
from common.errors import BadRequest

from .agent import AgentSpec, Tool

DEFAULT_MAX_TOKENS = 128  # SGLang's default max_new_tokens for /generate; used everywhere here
MAX_TOP_LOGPROBS = 20


@dataclass
class Sampling:
    max_new_tokens: int = DEFAULT_MAX_TOKENS
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    no_stop_trim: bool = False
    temperature: float | None = None
    """None: the API's default (1.0, sampling); 0: greedy."""
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Parsed:
    """One API call: ``n`` completions for each of ``prompts``."""

    kind: Literal["chat", "completion", "generate"]
    prompts: list[list[int]]
    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    rids: list[str] | None = None
    priority: int = 0
    model: str | None = None
    batch: bool = False
    """``/generate`` given a list of prompts answers with a list."""
    logprobs: int | None = None
    """Asked for log-probabilities with this many alternatives per token; None: not asked."""
    logprob_text: bool = True
    """``/generate``: token texts in the logprob triples (``return_text_in_logprobs``)."""
    agent: AgentSpec | None = None
    """Tools or a response format that shape the output; None: plain text."""


def _int(body: dict[str, Any], key: str, default: int | None, lo: int | None = None) -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"'{key}' must be an integer", param=key)
    if lo is not None and v < lo:
        raise BadRequest(f"'{key}' must be >= {lo}", param=key)
    return v


def _bool(body: dict[str, Any], key: str, param: str | None = None) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"'{param or key}' must be a boolean", param=param or key)
    return v


def _temperature(body: dict[str, Any], param: str = "temperature") -> float | None:
    t = body.get("temperature")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise BadRequest(f"'{param}' must be a number >= 0", param=param)
    return float(t)


def _top(body: dict[str, Any], key: str) -> int:
    n = _int(body, key, 0, lo=0) or 0
    if n > MAX_TOP_LOGPROBS:
        raise BadRequest(f"'{key}' must be <= {MAX_TOP_LOGPROBS}", param=key)
    return n


def _stop(v: Any, param: str = "stop") -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return list(v)
    raise BadRequest("'stop' must be a string or a list of strings", param=param)


def _stop_ids(v: Any) -> list[int]:
    if v is None:
        return []
    if isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return list(v)
    raise BadRequest("'stop_token_ids' must be a list of integers", param="stop_token_ids")


def _rids(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str) and v:
        return [v]
    if isinstance(v, list) and all(isinstance(r, str) and r for r in v):
        return list(v)
    raise BadRequest("'rid' must be a string or a list of strings", param="rid")


def _openai_common(body: dict[str, Any]) -> tuple[Sampling, int, bool, bool, list[str] | None, int]:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_new = DEFAULT_MAX_TOKENS
    else:
        max_new = _int({key: max_tokens}, key, DEFAULT_MAX_TOKENS, lo=0) or 0
    n = _int(body, "n", 1, lo=1) or 1
    if n > 64:
        raise BadRequest("'n' must be <= 64", param="n")
    stream = bool(body.get("stream", False))
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    include_usage = bool(opts.get("include_usage", False))
    sampling = Sampling(
        max_new_tokens=max_new,
        stop=_stop(body.get("stop")),
        stop_token_ids=_stop_ids(body.get("stop_token_ids")),
        seed=_int(body, "seed", None),
        no_stop_trim=_bool(body, "no_stop_trim"),
        temperature=_temperature(body),
        ignore_eos=_bool(body, "ignore_eos"),
    )
    priority = _int(body, "priority", 0) or 0
    return sampling, n, stream, include_usage, _rids(body.get("rid")), priority


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def parse_chat(body: Any, encode: Callable[[str], list[int]]) -> Parsed:
    body = _require_object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a string 'role'", param="messages")
    sampling, n, stream, usage, rids, priority = _openai_common(body)
    top = _top(body, "top_logprobs")
    logprobs = _bool(body, "logprobs")
    if top and not logprobs:
        raise BadRequest("'logprobs' must be true when 'top_logprobs' is set", param="logprobs")
    agent = parse_agent(body, messages)
    prompt = encode(render_chat(messages, tools=body.get("tools") if agent.tools else None))
    return Parsed("chat", [prompt], sampling, n, stream, usage, rids, priority, body.get("model"),
                  logprobs=top if logprobs else None, agent=agent if agent.active else None)


def _tools(v: Any) -> tuple[Tool, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise BadRequest("'tools' must be a list", param="tools")
    out = []
    for i, t in enumerate(v):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise BadRequest("each tool must be {'type': 'function', 'function': {...}}",
                             param=f"tools[{i}]")
        name, params = fn.get("name"), fn.get("parameters")
        if not isinstance(name, str) or not name:
            raise BadRequest("a function needs a 'name'", param=f"tools[{i}].function.name")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("'parameters' must be a JSON Schema object",
                             param=f"tools[{i}].function.parameters")
        out.append(Tool(name, params if params is not None else {"type": "object", "properties": {}}))
    return tuple(out)


def _tool_choice(v: Any, tools: tuple[Tool, ...]) -> tuple[str, str | None]:
    if v is None:
        return "auto", None
    if v in ("none", "auto", "required"):
        return str(v), None
    fn = v.get("function") if isinstance(v, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise BadRequest("'tool_choice' must be 'none', 'auto', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
    if name not in {t.name for t in tools}:
        raise BadRequest(f"tool_choice names '{name}', which is not among the tools",
                         param="tool_choice")
    return "function", name


def _response_format(v: Any) -> tuple[str, Any]:
    if v is None:
        return "text", None
    kind = v.get("type") if isinstance(v, dict) else None
    if kind in ("text", "structural_tag"):  # structural tags: not simulated, answered as text
        return "text", None
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        js = v.get("json_schema")
        if not isinstance(js, dict):
            raise BadRequest("'response_format.json_schema' must be an object",
                             param="response_format.json_schema")
        schema = js.get("schema", js.get("schema_", {}))
        if not isinstance(schema, (dict, bool)):
            raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema",
                             param="response_format.json_schema.schema")
        return "json_schema", schema
    raise BadRequest("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                     param="response_format.type")


def parse_agent(body: dict[str, Any], messages: list[dict[str, Any]]) -> AgentSpec:
    tools = _tools(body.get("tools"))
    choice, forced = _tool_choice(body.get("tool_choice"), tools)
    if choice in ("required", "function") and not tools:
        raise BadRequest("'tool_choice' needs 'tools'", param="tool_choice")
    fmt, schema = _response_format(body.get("response_format"))
    parallel = body.get("parallel_tool_calls")
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return AgentSpec(tools, choice, forced, parallel is not False, fmt,  # type: ignore[arg-type]
                     schema, str(messages[-1].get("role")), content_text(last_user.get("content")))


def _prompts(v: Any, encode: Callable[[str], list[int]], param: str) -> tuple[list[list[int]], bool]:
    """A string, a list of strings, a token list, or a list of token lists."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x
        )

    if isinstance(v, str):
        return [encode(v)], False
    if is_ids(v):
        return [list(v)], False
    if isinstance(v, list) and v and all(isinstance(p, str) for p in v):
        return [encode(p) for p in v], True
    if isinstance(v, list) and v and all(is_ids(p) for p in v):
        return [list(p) for p in v], True
    raise BadRequest(f"'{param}' must be a string, a list of strings or token ids", param=param)


def parse_completion(body: Any, encode: Callable[[str], list[int]]) -> Parsed:
    body = _require_object(body)
    if "prompt" not in body:
        raise BadRequest("'prompt' is required", param="prompt")
    prompts, batch = _prompts(body["prompt"], encode, "prompt")
    sampling, n, stream, usage, rids, priority = _openai_common(body)
    logprobs = _top(body, "logprobs") if body.get("logprobs") is not None else None
    return Parsed("completion", prompts, sampling, n, stream, usage, rids, priority,
                  body.get("model"), batch, logprobs)


def parse_generate(body: Any, encode: Callable[[str], list[int]]) -> Parsed:
    body = _require_object(body)
    if body.get("input_ids") is not None:
        prompts, batch = _prompts(body["input_ids"], encode, "input_ids")
    elif body.get("text") is not None:
        prompts, batch = _prompts(body["text"], encode, "text")
    else:
        raise BadRequest("one of 'text' or 'input_ids' is required", param="text")
    sp = body.get("sampling_params") or {}
    if not isinstance(sp, dict):
        raise BadRequest("'sampling_params' must be an object", param="sampling_params")
    sampling = Sampling(
        max_new_tokens=_int(sp, "max_new_tokens", DEFAULT_MAX_TOKENS, lo=0) or 0,
        stop=_stop(sp.get("stop"), "sampling_params.stop"),
        stop_token_ids=_stop_ids(sp.get("stop_token_ids")),
        seed=_int(sp, "sampling_seed", None),
        no_stop_trim=_bool(sp, "no_stop_trim", "sampling_params.no_stop_trim"),
        temperature=_temperature(sp, "sampling_params.temperature"),
        ignore_eos=_bool(sp, "ignore_eos", "sampling_params.ignore_eos"),
    )
    n = _int(sp, "n", 1, lo=1) or 1
    logprobs = _top(body, "top_logprobs_num") if _bool(body, "return_logprob") else None
    return Parsed("generate", prompts, sampling, n, bool(body.get("stream", False)), False,
                  _rids(body.get("rid")), _int(body, "priority", 0) or 0, None, batch, logprobs,
                  _bool(body, "return_text_in_logprobs"), _json_schema(sp))


def _json_schema(sp: dict[str, Any]) -> AgentSpec | None:
    """SGLang's ``sampling_params.json_schema``: the schema as a JSON string."""
    raw = sp.get("json_schema")
    if raw is None:
        return None
    try:
        schema = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        schema = None
    if not isinstance(schema, (dict, bool)):
        raise BadRequest("'sampling_params.json_schema' must be a JSON Schema as a string",
                         param="sampling_params.json_schema")
    return AgentSpec(response_format="json_schema", schema=schema)
