"""Validation of OpenAI request bodies at the edge.

Bodies are checked with pydantic models that allow unknown fields (they are
passed through to the engine unchanged); the original dict is what travels on.
Errors carry the OpenAI ``param`` path of the offending field.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from common.errors import BadRequest, PayloadTooLarge

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: StrictStr


class Message(_Open):
    role: Role
    content: Union[StrictStr, list[ContentPart], None] = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class _Common(_Open):
    model: StrictStr | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, ge=0)
    max_completion_tokens: StrictInt | None = Field(None, ge=0)
    n: StrictInt | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: Union[StrictStr, list[StrictStr], None] = None
    user: StrictStr | None = None


class ChatBody(_Common):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(_Common):
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]


class SamplingParams(_Open):
    max_new_tokens: StrictInt | None = Field(None, ge=0, le=1 << 17)
    n: StrictInt | None = Field(None, ge=1, le=1)
    temperature: float | None = Field(None, ge=0)
    stop: Union[StrictStr, list[StrictStr], None] = None
    json_schema: StrictStr | None = None


class GenerateBody(_Open):
    """SGLang's native ``/generate``, one prompt per request: batches (lists of prompts) and
    ``n`` > 1 answer with lists, which the gateway would have to schedule as one job; send
    one request per prompt instead. ``model`` is the gateway's addition (picks engines)."""

    text: Union[StrictStr, list[StrictStr], None] = None
    input_ids: Union[list[StrictInt], list[list[StrictInt]], None] = None
    sampling_params: SamplingParams | None = None
    stream: StrictBool | None = None
    rid: StrictStr | None = None
    return_logprob: StrictBool | None = None
    top_logprobs_num: StrictInt | None = Field(None, ge=0, le=20)
    model: StrictStr | None = None



def validate_generate(body: dict[str, Any]) -> GenerateBody:
    try:
        parsed = GenerateBody.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid value")
        raise BadRequest(f"invalid '{param}': {msg}", param=param or None) from exc
    if (parsed.text is None) == (parsed.input_ids is None):
        raise BadRequest("exactly one of 'text' or 'input_ids' is required", param="text")
    param = "text" if parsed.text is not None else "input_ids"
    if isinstance(parsed.text, list) or (parsed.input_ids and isinstance(parsed.input_ids[0], list)):
        raise BadRequest("a batch (a list of prompts) is not accepted through the gateway: send one "
                         "request per prompt, so that each is scheduled on its own", param=param)
    if parsed.input_ids is not None and not parsed.input_ids:
        raise BadRequest("'input_ids' is empty", param="input_ids")
    return parsed


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]", "none") or "[" in str(part):
            continue  # union branch names, not fields
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_json(raw: bytes, limit: int) -> dict[str, Any]:
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is {limit}")
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    return body


def validate(body: dict[str, Any], model: type[_Common], *, max_messages: int) -> _Common:
    if model is ChatBody and isinstance(body.get("messages"), list):
        if len(body["messages"]) > max_messages:
            raise PayloadTooLarge(
                f"{len(body['messages'])} messages; the limit is {max_messages}", param="messages"
            )
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = f"'{param}' is a required property"
        else:
            msg = f"invalid '{param}': {msg}"
        raise BadRequest(msg, param=param or None) from exc
    _check_output_budget(parsed)
    return parsed


MAX_OUTPUT_TOKENS = 1 << 17
"""Most tokens one request may ask to generate (n x max_tokens): the longest context of
the open models SGLang serves (128k). Larger asks are refused up front, as engines do,
instead of tying an engine up for hours (or forever: max_tokens=10**12)."""


def _check_output_budget(parsed: _Common) -> None:
    asked = parsed.max_completion_tokens or parsed.max_tokens or 0
    n = parsed.n or 1
    if asked * n > MAX_OUTPUT_TOKENS:
        param = "max_completion_tokens" if parsed.max_completion_tokens else "max_tokens"
        raise BadRequest(
            f"invalid '{param}': n x max_tokens = {asked * n}; the limit is {MAX_OUTPUT_TOKENS}",
            param=param,
        )
