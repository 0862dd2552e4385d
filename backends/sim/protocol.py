"""Request parsing and response shaping for SGLang's HTTP API. Pure.

Field names follow SGLang's OpenAI-compatible server (``rid``, ``priority``,
``usage.prompt_tokens_details.cached_tokens``, ``matched_stop``) and its
native ``/generate`` (``sampling_params``, ``meta_info``). Unknown fields are
tolerated, as SGLang does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from analysis.chat_template import render_chat
from common.errors import BadRequest

from .textgen import Generation

DEFAULT_MAX_TOKENS = 128  # SGLang's default max_new_tokens for /generate; used everywhere here


@dataclass
class Sampling:
    max_new_tokens: int = DEFAULT_MAX_TOKENS
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None
    no_stop_trim: bool = False


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


def _int(body: dict[str, Any], key: str, default: int | None, lo: int | None = None) -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"'{key}' must be an integer", param=key)
    if lo is not None and v < lo:
        raise BadRequest(f"'{key}' must be >= {lo}", param=key)
    return v


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
        no_stop_trim=bool(body.get("no_stop_trim", False)),
    )
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
        raise BadRequest("'temperature' must be a number >= 0", param="temperature")
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
    prompt = encode(render_chat(messages))
    return Parsed("chat", [prompt], sampling, n, stream, usage, rids, priority, body.get("model"))


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
    return Parsed("completion", prompts, sampling, n, stream, usage, rids, priority,
                  body.get("model"), batch)


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
        no_stop_trim=bool(sp.get("no_stop_trim", False)),
    )
    n = _int(sp, "n", 1, lo=1) or 1
    return Parsed("generate", prompts, sampling, n, bool(body.get("stream", False)), False,
                  _rids(body.get("rid")), _int(body, "priority", 0) or 0, None, batch)


# -- responses -------------------------------------------------------------------------


@dataclass
class Done:
    """A finished completion, ready to be shaped into any of the APIs."""

    rid: str
    index: int
    prompt_tokens: int
    cached_tokens: int
    gen: Generation
    produced: int
    """Tokens actually produced (== len(gen.token_ids) unless aborted)."""
    e2e_latency: float = 0.0


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


def usage(done: Sequence[Done], prompt_counted: Sequence[Done] | None = None) -> dict[str, Any]:
    firsts = prompt_counted if prompt_counted is not None else done
    prompt = sum(d.prompt_tokens for d in firsts)
    completion = sum(d.produced for d in done)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(d.cached_tokens for d in firsts)},
    }


def sglang_finish_reason(d: Done) -> dict[str, Any]:
    if d.gen.finish_reason == "stop":
        return {"type": "stop", "matched": d.gen.matched_stop}
    return {"type": "length", "length": d.produced}


def generate_item(d: Done, text: str, output_ids: list[int], finished: bool) -> dict[str, Any]:
    return {
        "text": text,
        "output_ids": output_ids,
        "meta_info": {
            "id": d.rid,
            "finish_reason": sglang_finish_reason(d) if finished else None,
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": len(output_ids),
            "cached_tokens": d.cached_tokens,
            "e2e_latency": d.e2e_latency,
        },
    }


def chat_response(rid: str, model: str, created: int, done: Sequence[Done],
                  prompt_counted: Sequence[Done]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": d.index,
                "message": {"role": "assistant", "content": d.gen.text,
                            "reasoning_content": None, "tool_calls": None},
                "logprobs": None,
                "finish_reason": d.gen.finish_reason,
                "matched_stop": d.gen.matched_stop,
            }
            for d in done
        ],
        "usage": usage(done, prompt_counted),
    }


def completion_response(rid: str, model: str, created: int, done: Sequence[Done],
                        prompt_counted: Sequence[Done]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": d.index, "text": d.gen.text, "logprobs": None,
             "finish_reason": d.gen.finish_reason, "matched_stop": d.gen.matched_stop}
            for d in done
        ],
        "usage": usage(done, prompt_counted),
    }
