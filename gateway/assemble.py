"""Fold a stream of OpenAI chunks back into the non-streaming response object.

The gateway streams from engines even when the client did not ask to: the
first chunk tells the scheduler that the prompt's prefill is done (so requests
waiting for a shared prefix can go), and the assembled object is what the
client would have received from a non-streaming call. Pure, no I/O.
"""

from __future__ import annotations

from typing import Any

from common.types import JSON, Route

_TOP_SKIP = {"choices", "usage", "object"}


class Assembler:
    def __init__(self, route: Route) -> None:
        self.route = route
        self.top: JSON = {}
        self.choices: dict[int, JSON] = {}
        self.usage: JSON | None = None

    def add(self, chunk: JSON) -> None:
        for k, v in chunk.items():
            if k not in _TOP_SKIP and v is not None:
                self.top.setdefault(k, v)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            idx = int(c.get("index", 0))
            acc = self.choices.setdefault(idx, self._empty(idx))
            if self.route == "chat":
                self._merge_delta(acc["message"], c.get("delta") or {})
            else:
                acc["text"] += str(c.get("text") or "")
            self._merge_logprobs(acc, c.get("logprobs"))
            for k, v in c.items():
                if k in ("index", "delta", "text", "logprobs"):
                    continue
                if v is not None:
                    acc[k] = v

    def _empty(self, idx: int) -> JSON:
        if self.route == "chat":
            return {"index": idx, "message": {"role": "assistant", "content": None},
                    "logprobs": None, "finish_reason": None}
        return {"index": idx, "text": "", "logprobs": None, "finish_reason": None}

    @staticmethod
    def _merge_delta(msg: JSON, delta: JSON) -> None:
        for k, v in delta.items():
            if v is None:
                continue
            if k == "role":
                msg["role"] = v
            elif k == "tool_calls":
                calls: list[JSON] = msg.setdefault("tool_calls", [])
                for tc in v:
                    i = int(tc.get("index", len(calls)))
                    while len(calls) <= i:
                        calls.append({"id": None, "type": "function",
                                      "function": {"name": "", "arguments": ""}})
                    call = calls[i]
                    if tc.get("id"):
                        call["id"] = tc["id"]
                    if tc.get("type"):
                        call["type"] = tc["type"]
                    fn = tc.get("function") or {}
                    if fn.get("name"):
                        call["function"]["name"] += fn["name"]
                    if fn.get("arguments"):
                        call["function"]["arguments"] += fn["arguments"]
            elif isinstance(v, str):
                msg[k] = (msg.get(k) or "") + v
            else:
                msg[k] = v

    @staticmethod
    def _merge_logprobs(acc: JSON, lp: Any) -> None:
        if not lp:
            return
        if acc["logprobs"] is None:
            acc["logprobs"] = {}
        for k, v in lp.items():
            if isinstance(v, list):
                acc["logprobs"].setdefault(k, []).extend(v)
            else:
                acc["logprobs"][k] = v

    def result(self) -> JSON:
        body: JSON = dict(self.top)
        body["object"] = "chat.completion" if self.route == "chat" else "text_completion"
        body["choices"] = [self.choices[i] for i in sorted(self.choices)]
        if self.route == "chat":
            for c in body["choices"]:
                msg = c["message"]
                if msg.get("tool_calls"):  # a call without text says content null, as OpenAI does
                    msg["content"] = msg.get("content") or None
                elif msg.get("content") is None:
                    msg["content"] = ""
        if self.usage is not None:
            body["usage"] = self.usage
        return body
