"""Responses API <-> chat completions, both ways. Pure, no I/O.

A Responses request becomes one chat request (instructions first, then the
chained conversation, then this turn's input items); the chat answer becomes
output items (a ``message`` with ``output_text``, then one ``function_call``
per tool call). Streams go through :class:`EventStream`, which turns chat
chunks into the documented event sequence::

    response.created, response.in_progress,
    response.output_item.added, response.content_part.added,
    response.output_text.delta ..., response.output_text.done,
    response.content_part.done, response.output_item.done,
    (function calls: output_item.added, function_call_arguments.delta ...,
     function_call_arguments.done, output_item.done),
    response.completed | response.incomplete | response.failed
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from common.types import JSON

from .responses_schema import (
    FormatJsonObject,
    FormatJsonSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    ImagePart,
    MessageItem,
    NamedFunction,
    RefusalPart,
    ResponsesBody,
    TextPart,
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- request: Responses -> chat -------------------------------------------------------------


def _parts_text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(p.text if isinstance(p, TextPart) else p.refusal if isinstance(p, RefusalPart)
                   else "" for p in parts)


def _content(parts: Any) -> Any:
    """Chat content: a string when all parts are text (what every chat template takes)."""
    if isinstance(parts, str) or not any(isinstance(p, ImagePart) for p in parts):
        return _parts_text(parts)
    return [{"type": "image_url", "image_url": {"url": p.image_url, "detail": p.detail or "auto"}}
            if isinstance(p, ImagePart) else {"type": "text", "text": _parts_text([p])} for p in parts]


def input_messages(req: ResponsesBody) -> list[JSON]:
    """This turn's input as chat messages (instructions excluded: they do not carry over)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[JSON] = []
    for item in req.input:
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": _content(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            prev = out[-1] if out else None
            if prev is not None and prev["role"] == "assistant" and "tool_calls" in prev:
                prev["tool_calls"].append(call)
            elif prev is not None and prev["role"] == "assistant" and not prev.get("tool_calls"):
                prev["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _parts_text(item.output)})
    return out


def chat_body(req: ResponsesBody, history: list[JSON], stream: bool) -> JSON:
    """The chat request that answers ``req`` after the chained ``history``."""
    messages: list[JSON] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += history + input_messages(req)
    body: JSON = {**req.extras, "model": req.model or "", "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(req, key) is not None:
            body[key] = getattr(req, key)
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t.name), ("description", t.description),
                              ("parameters", t.parameters), ("strict", t.strict)) if v is not None}}
            for t in req.tools]
    if isinstance(req.tool_choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if isinstance(fmt, FormatJsonSchema):
        js = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            js["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": js}
    elif isinstance(fmt, FormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    if req.top_logprobs is not None or "message.output_text.logprobs" in (req.include or []):
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    return body


# -- response: chat -> Responses ---------------------------------------------------------------


def skeleton(req: ResponsesBody, rid: str, created_at: int | None = None) -> JSON:
    """The response object before any output: what the request asked for, echoed."""
    fmt = req.text.format if req.text and req.text.format else None
    text_format: JSON = {"type": "text"}
    if isinstance(fmt, FormatJsonSchema):
        text_format = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema_,
                       "strict": fmt.strict, "description": fmt.description}
    elif fmt is not None:
        text_format = {"type": fmt.type}
    extra = req.model_extra or {}
    return {
        "id": rid, "object": "response", "created_at": created_at or int(time.time()),
        "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "model": req.model or "", "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": extra.get("reasoning") or {"effort": None, "summary": None},
        "store": req.store if req.store is not None else True,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": text_format},
        "tool_choice": (req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedFunction)
                        else req.tool_choice or "auto"),
        "tools": [t.model_dump(exclude_none=False) for t in req.tools or []],
        "top_logprobs": req.top_logprobs,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": extra.get("truncation") or "disabled",
        "usage": None, "user": req.user, "metadata": req.metadata or {},
    }


def usage_of(chat_usage: Any) -> JSON | None:
    if not isinstance(chat_usage, dict):
        return None
    details = chat_usage.get("prompt_tokens_details") or {}
    inp, out = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    return {"input_tokens": inp,
            "input_tokens_details": {"cached_tokens": int(details.get("cached_tokens") or 0)},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out}


def _logprobs(chat_lp: Any) -> list[JSON]:
    content = chat_lp.get("content") if isinstance(chat_lp, dict) else None
    return [{"token": e.get("token"), "logprob": e.get("logprob"), "bytes": e.get("bytes") or [],
             "top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob"),
                               "bytes": t.get("bytes") or []} for t in e.get("top_logprobs") or []]}
            for e in content or []]


def message_item(text: str, status: str, logprobs: list[JSON] | None = None,
                 item_id: str | None = None) -> JSON:
    return {"type": "message", "id": item_id or new_id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": logprobs or []}]}


def call_item(call_id: str, name: str, arguments: str, status: str, item_id: str | None = None) -> JSON:
    return {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def finished(base: JSON, output: list[JSON], finish_reason: Any, usage: JSON | None, model: Any) -> JSON:
    """``base`` completed (or incomplete, when the output budget cut it) with ``output``."""
    cut = finish_reason == "length"
    return {**base, "status": "incomplete" if cut else "completed", "output": output,
            "completed_at": None if cut else int(time.time()),
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "usage": usage, "model": model or base["model"]}


def from_chat(base: JSON, chat: JSON) -> JSON:
    """The finished response for a (non-streamed) chat completion."""
    choice = (chat.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    output: list[JSON] = []
    calls = msg.get("tool_calls") or []
    if msg.get("content") or not calls:
        output.append(message_item(str(msg.get("content") or ""), status, _logprobs(choice.get("logprobs"))))
    for c in calls:
        fn = c.get("function") or {}
        output.append(call_item(str(c.get("id") or new_id("call")), str(fn.get("name") or ""),
                                str(fn.get("arguments") or ""), status))
    return finished(base, output, choice.get("finish_reason"), usage_of(chat.get("usage")),
                    chat.get("model"))


def output_messages(output: list[JSON]) -> list[JSON]:
    """A response's output as chat messages, for the conversation a later turn chains onto."""
    text = "".join(p.get("text", "") for item in output if item["type"] == "message"
                   for p in item["content"])
    calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"],
                                                                  "arguments": i["arguments"]}}
             for i in output if i["type"] == "function_call"]
    msg: JSON = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        msg["tool_calls"] = calls
    return [msg]


# -- streams ------------------------------------------------------------------------------------


@dataclass
class _Item:
    index: int
    item: JSON
    text: str = ""
    logprobs: list[JSON] = field(default_factory=list)


@dataclass
class EventStream:
    """Chat chunks in, Responses stream events out (choice 0; ``n`` is always 1 here)."""

    base: JSON
    seq: int = 0
    output: list[JSON] = field(default_factory=list)
    usage: JSON | None = None
    finish_reason: Any = None
    model: Any = None
    _open: _Item | None = None
    _calls: dict[int, _Item] = field(default_factory=dict)

    def _event(self, kind: str, **data: Any) -> JSON:
        ev = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return ev

    def start(self) -> list[JSON]:
        return [self._event("response.created", response=self.base),
                self._event("response.in_progress", response=self.base)]

    def chunk(self, chunk: JSON) -> list[JSON]:
        events: list[JSON] = []
        self.model = self.model or chunk.get("model")
        if chunk.get("usage"):
            self.usage = usage_of(chunk["usage"])
        for c in chunk.get("choices") or ():
            if c.get("index", 0) != 0:
                continue
            delta = c.get("delta") or {}
            if delta.get("content"):
                events += self._text(delta["content"], _logprobs(c.get("logprobs")))
            for tc in delta.get("tool_calls") or ():
                events += self._call(tc)
            self.finish_reason = c.get("finish_reason") or self.finish_reason
        return events

    def _message(self) -> list[JSON]:
        """Open a message item with one (empty) output_text part."""
        events = self._close()
        item = message_item("", "in_progress")
        item["content"] = []
        self._open = _Item(len(self.output), item)
        self.output.append(item)
        return [*events,
                self._event("response.output_item.added", output_index=self._open.index, item=item),
                self._event("response.content_part.added", item_id=item["id"],
                            output_index=self._open.index, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})]

    def _text(self, delta: str, logprobs: list[JSON]) -> list[JSON]:
        events = []
        if self._open is None or self._open.item["type"] != "message":
            events += self._message()
        assert self._open is not None
        self._open.text += delta
        self._open.logprobs += logprobs
        events.append(self._event("response.output_text.delta", item_id=self._open.item["id"],
                                  output_index=self._open.index, content_index=0, delta=delta,
                                  logprobs=logprobs))
        return events

    def _call(self, tc: JSON) -> list[JSON]:
        events = []
        idx = int(tc.get("index", 0))
        fn = tc.get("function") or {}
        if idx not in self._calls:
            events += self._close()
            item = call_item(str(tc.get("id") or new_id("call")), str(fn.get("name") or ""), "",
                             "in_progress")
            self._open = self._calls[idx] = _Item(len(self.output), item)
            self.output.append(item)
            events.append(self._event("response.output_item.added", output_index=self._open.index,
                                      item=dict(item)))
        state = self._calls[idx]
        if fn.get("arguments"):
            state.text += fn["arguments"]
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=state.item["id"], output_index=state.index,
                                      delta=fn["arguments"]))
        return events

    def _close(self) -> list[JSON]:
        """Finish the open item: its done events, its final form in ``output``."""
        o, self._open = self._open, None
        if o is None:
            return []
        status = "incomplete" if self.finish_reason == "length" else "completed"
        if o.item["type"] == "function_call":
            item = {**o.item, "arguments": o.text, "status": status}
            self.output[o.index] = item
            return [self._event("response.function_call_arguments.done", item_id=item["id"],
                                output_index=o.index, name=item["name"], arguments=o.text),
                    self._event("response.output_item.done", output_index=o.index, item=item)]
        item = message_item(o.text, status, o.logprobs, o.item["id"])
        self.output[o.index] = item
        part = item["content"][0]
        return [self._event("response.output_text.done", item_id=item["id"], output_index=o.index,
                            content_index=0, text=o.text, logprobs=o.logprobs),
                self._event("response.content_part.done", item_id=item["id"], output_index=o.index,
                            content_index=0, part=part),
                self._event("response.output_item.done", output_index=o.index, item=item)]

    def finish(self) -> tuple[list[JSON], JSON]:
        """The closing events (without the terminal one) and the finished response."""
        events = self._close()
        if not self.output:  # nothing said: one empty message, as the API always has output
            events += self._message() + self._close()
        return events, finished(self.base, self.output, self.finish_reason, self.usage, self.model)

    def terminal(self, response: JSON) -> JSON:
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self._event(kind, response=response)

    def failed(self, error: JSON) -> JSON:
        response = {**self.base, "status": "failed", "output": self.output, "error": error}
        return self._event("response.failed", response=response)
