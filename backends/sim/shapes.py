"""Response shaping for SGLang's HTTP API: finished generations out as JSON. Pure.

Field names follow SGLang (``usage.prompt_tokens_details.cached_tokens``,
``matched_stop``, ``meta_info``). Log-probabilities appear only when asked for:
OpenAI routes list one entry per token that shows in the text (EOS and trimmed
stop tokens do not), ``/generate`` one ``[logprob, token_id, text]`` triple per
output token, as SGLang's ``output_token_logprobs``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .textgen import Generation, TokenLogprob


@dataclass
class Done:
    """A finished (or partly produced) completion, ready to be shaped into any of the APIs."""

    rid: str
    index: int
    prompt_tokens: int
    cached_tokens: int
    gen: Generation
    produced: int
    """Tokens actually produced (== len(gen.token_ids) unless aborted or still running)."""
    e2e_latency: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    """Of every token of ``gen`` when asked for; None when not."""


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


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


# -- log-probabilities ----------------------------------------------------------------------


def _visible(d: Done, start: int = 0, end: int | None = None) -> list[tuple[int, TokenLogprob]]:
    """(text offset, logprob) of each produced token in [start, end) that shows in the text."""
    assert d.logprobs is not None
    end = d.produced if end is None else end
    offsets, pieces = d.gen.offsets, d.gen.pieces
    return [(offsets[i], d.logprobs[i]) for i in range(start, end) if pieces[i]]


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(d: Done, start: int = 0, end: int | None = None) -> dict[str, Any] | None:
    """OpenAI chat ``logprobs`` of tokens [start, end); None when not asked for."""
    if d.logprobs is None:
        return None
    return {"content": [
        {**_entry(lp.token, lp.logprob), "top_logprobs": [_entry(t, p) for _, t, p in lp.top]}
        for _, lp in _visible(d, start, end)
    ]}


def completion_logprobs(d: Done, start: int = 0, end: int | None = None) -> dict[str, Any] | None:
    """OpenAI completions ``logprobs`` of tokens [start, end); None when not asked for."""
    if d.logprobs is None:
        return None
    vis = _visible(d, start, end)
    return {
        "tokens": [lp.token for _, lp in vis],
        "token_logprobs": [lp.logprob for _, lp in vis],
        "top_logprobs": [{t: p for _, t, p in lp.top} for _, lp in vis],
        "text_offset": [off for off, _ in vis],
    }


# -- whole responses ------------------------------------------------------------------------


def sglang_finish_reason(d: Done) -> dict[str, Any]:
    if d.gen.finish_reason == "stop":
        return {"type": "stop", "matched": d.gen.matched_stop}
    if d.gen.finish_reason == "abort":
        return {"type": "abort", "message": "aborted"}
    return {"type": "length", "length": d.produced}


def generate_item(d: Done, text: str, finished: bool, logprob_text: bool = True) -> dict[str, Any]:
    """One ``/generate`` answer (or cumulative stream item) with the first ``d.produced`` tokens."""
    output_ids = list(d.gen.token_ids[: d.produced])
    meta: dict[str, Any] = {
        "id": d.rid,
        "finish_reason": sglang_finish_reason(d) if finished else None,
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": len(output_ids),
        "cached_tokens": d.cached_tokens,
        "e2e_latency": d.e2e_latency,
    }
    if d.logprobs is not None:
        lps = d.logprobs[: d.produced]
        meta["output_token_logprobs"] = [
            [lp.logprob, lp.token_id, lp.token if logprob_text else None] for lp in lps
        ]
        if any(lp.top for lp in lps):
            meta["output_top_logprobs"] = [
                [[p, i, t if logprob_text else None] for i, t, p in lp.top] for lp in lps
            ]
    return {"text": text, "output_ids": output_ids, "meta_info": meta}


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
                "message": {"role": "assistant",
                            "content": None if d.gen.calls and not d.gen.text else d.gen.text,
                            "reasoning_content": None, "tool_calls": d.gen.tool_calls(d.produced)},
                "logprobs": chat_logprobs(d),
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
            {"index": d.index, "text": d.gen.text, "logprobs": completion_logprobs(d),
             "finish_reason": d.gen.finish_reason, "matched_stop": d.gen.matched_stop}
            for d in done
        ],
        "usage": usage(done, prompt_counted),
    }


# -- stream chunks ----------------------------------------------------------------------------


def openai_only(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without SGLang's extra response fields (``matched_stop``, cached-token details),
    as a plain OpenAI-compatible server (vLLM by default, llama.cpp) answers."""
    for c in obj.get("choices") or ():
        c.pop("matched_stop", None)
        if isinstance(c.get("message"), dict):
            c["message"].pop("reasoning_content", None)
    if isinstance(obj.get("usage"), dict):
        obj["usage"].pop("prompt_tokens_details", None)
    return obj


@dataclass(frozen=True)
class ChunkHead:
    """What every chunk of one streamed OpenAI response repeats."""

    rid: str
    model: str
    created: int
    chat: bool
    sglang: bool = True
    """False: shaped as a plain OpenAI-compatible server (:func:`openai_only`)."""

    def chunk(self, choices: list[Any], usage: Any = None) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        body = {"id": self.rid, "object": obj, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage}
        return sse(body if self.sglang else openai_only(body))

    def role(self, index: int) -> str:
        return self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                            "logprobs": None, "finish_reason": None}])

    def token(self, d: Done, i: int) -> str | None:
        """The chunk of token ``i`` of ``d``; None when it adds no text and no tool call."""
        piece = d.gen.pieces[i]
        if self.chat and d.gen.calls and not piece:
            calls = d.gen.call_deltas(i)
            if not calls:
                return None
            return self.chunk([{"index": d.index, "delta": {"tool_calls": calls},
                                "logprobs": None, "finish_reason": None}])
        if not piece:
            return None
        if self.chat:
            return self.chunk([{"index": d.index, "delta": {"content": piece},
                                "logprobs": chat_logprobs(d, i, i + 1), "finish_reason": None}])
        return self.chunk([{"index": d.index, "text": piece,
                            "logprobs": completion_logprobs(d, i, i + 1), "finish_reason": None}])

    def finish(self, d: Done) -> str:
        body: dict[str, Any] = {"index": d.index}
        body.update({"delta": {}} if self.chat else {"text": ""})
        body.update({"logprobs": None, "finish_reason": d.gen.finish_reason,
                     "matched_stop": d.gen.matched_stop})
        return self.chunk([body])
