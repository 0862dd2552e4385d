"""One ``POST /v1/responses`` call: its chat request, its event stream, and its record.

Shared by the plain path (``responses_api``) and the semantic-variable path
(``responses_semantic``), which differ only in how the chat request runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from analysis.placeholders import escape, substitute_messages
from common.errors import ParrotError
from common.types import JSON

from .completion import RequestContext
from .response_store import StoredResponse
from .responses_schema import ResponsesBody
from .responses_translate import EventStream, chat_body, input_messages, new_id, output_messages, skeleton
from .validation import ChatBody, validate

if TYPE_CHECKING:
    from .auth import Principal
    from .wiring import Gateway

Values = Callable[[], Awaitable[dict[str, str]]]


def sse_event(event: JSON) -> bytes:
    return (f"event: {event['type']}\ndata: ".encode()
            + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def input_items(req: ResponsesBody) -> list[JSON]:
    """This turn's input items as ``GET /v1/responses/{id}/input_items`` lists them."""
    if isinstance(req.input, str):
        items: list[JSON] = [{"type": "message", "role": "user", "status": "completed",
                              "content": [{"type": "input_text", "text": req.input}]}]
    else:
        items = [i.model_dump(by_alias=True, exclude_none=True) for i in req.input]
    return [{"id": i.get("id") or new_id("msg"), **i} for i in items]


def literal_history(history: list[JSON]) -> list[JSON]:
    """``history`` with every ``{{`` in its text escaped: in a semantic turn, what was said
    before is literal text, never a placeholder."""
    out = []
    for m in history:
        content = m.get("content")
        if isinstance(content, str):
            m = {**m, "content": escape(content)}
        elif isinstance(content, list):
            m = {**m, "content": [{**p, "text": escape(p["text"])} if p.get("type") == "text" else p
                                  for p in content]}
        out.append(m)
    return out


class Turn:
    """The parsed request, the chat request that answers it, and how to store the result.

    ``history`` is the chained conversation (``previous_response_id``). ``values``,
    for semantic requests, reads the variables this turn's placeholders named, so
    that the stored conversation holds what the engine saw."""

    def __init__(self, gw: Gateway, principal: Principal, req: ResponsesBody,
                 history: list[JSON], request_id: str, *, semantic: bool = False) -> None:
        self.gw, self.principal, self.req = gw, principal, req
        self.history = history
        self.chat = chat_body(req, literal_history(history) if semantic else history,
                              stream=bool(req.stream))
        validate(self.chat, ChatBody, max_messages=gw.settings.max_messages)
        self.base = skeleton(req, new_id("resp"))
        tenant = principal.tenant if gw.auth.enabled else req.user or principal.tenant
        self.ctx = RequestContext(request_id=request_id, tenant=tenant, weight=principal.weight)
        self.values: Values | None = None

    @property
    def stored(self) -> bool:
        return self.req.store is not False

    async def conversation(self, response: JSON) -> list[JSON]:
        said = input_messages(self.req)
        if self.values is not None:
            said = substitute_messages(said, await self.values())
        return self.history + said + output_messages(response["output"])

    async def save(self, response: JSON, *, final: bool = True) -> None:
        if not self.stored:
            return
        conversation = await self.conversation(response) if final else []
        await self.gw.responses.put(self.principal.tenant,
                                    StoredResponse(response, conversation, input_items(self.req)))

    async def events(self, chunks: AsyncIterator[JSON], extra: JSON | None = None) -> AsyncIterator[bytes]:
        """The event stream of ``chunks``; ``extra`` joins the finished response."""
        stream = EventStream(self.base)
        for ev in stream.start():
            yield sse_event(ev)
        try:
            async for chunk in chunks:
                for ev in stream.chunk(chunk):
                    yield sse_event(ev)
            closing, response = stream.finish()
            for ev in closing:
                yield sse_event(ev)
            response = {**response, **(extra or {})}
            await self.save(response)
            yield sse_event(stream.terminal(response))
        except ParrotError as exc:
            yield sse_event(stream.failed({"code": exc.code, "message": exc.message}))
