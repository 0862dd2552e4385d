"""The OpenAI Responses API request body, validated with pydantic at the edge.

What the gateway serves of it (over the engines' chat route): text and
message-item input (text and image parts), function tools and their call /
output items, ``instructions``, ``max_output_tokens``, ``temperature``,
``top_p``, ``tool_choice``, ``parallel_tool_calls``, ``text.format``
(``text``, ``json_object``, ``json_schema``), ``top_logprobs``, ``store``,
``previous_response_id``, ``stream``, ``metadata``, ``user``. Fields it
cannot honour (built-in tools, ``background``, ``conversation``, reusable
``prompt``, ``item_reference`` and file inputs) are refused with a 400 that
names them; unknown fields travel to the engine like on the chat route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from common.errors import BadRequest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class TextPart(_Open):
    type: Literal["input_text", "output_text"]
    text: StrictStr


class ImagePart(_Open):
    type: Literal["input_image"]
    image_url: StrictStr | None = None
    detail: StrictStr | None = None


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: StrictStr


Part = Annotated[Union[TextPart, ImagePart, RefusalPart], Field(discriminator="type")]


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[StrictStr, list[Part]]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr
    id: StrictStr | None = None


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: Union[StrictStr, list[Part]]


class ReasoningItem(_Open):
    type: Literal["reasoning"]


InputItem = Annotated[Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem],
                      Field(discriminator="type")]


class FunctionTool(_Open):
    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=128)
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class NamedFunction(_Closed):
    type: Literal["function"]
    name: StrictStr


class FormatText(_Closed):
    type: Literal["text"]


class FormatJsonObject(_Closed):
    type: Literal["json_object"]


class FormatJsonSchema(_Closed):
    type: Literal["json_schema"]
    name: StrictStr = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class TextConfig(_Open):
    format: Annotated[Union[FormatText, FormatJsonObject, FormatJsonSchema],
                      Field(discriminator="type")] | None = None


UNSUPPORTED = {
    "background": "background responses are not supported by this gateway",
    "conversation": "conversations are not supported by this gateway: chain with previous_response_id",
    "prompt": "reusable prompts are not supported by this gateway",
}
FORWARDED_EXCLUDED = frozenset({
    "include", "reasoning", "truncation", "metadata", "service_tier", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "max_tool_calls",
    "stream_options", "context_management", "moderation", "image", "access_programs",
    "background_options",
})
"""Responses-only fields that are accepted (and echoed where the API echoes them) but mean
nothing to a chat engine, so they are not forwarded with the unknown ones."""


class ResponsesBody(_Open):
    model: StrictStr | None = None
    input: Union[StrictStr, list[InputItem]]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1, le=1 << 17)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedFunction, None] = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    stream: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None
    user: StrictStr | None = None
    include: list[StrictStr] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _easy_messages(cls, v: Any) -> Any:
        """An item with a role and no type is an easy input message."""
        if isinstance(v, list):
            return [{**i, "type": "message"} if isinstance(i, dict) and "type" not in i and "role" in i
                    else i for i in v]
        return v

    @property
    def extras(self) -> dict[str, Any]:
        """Unknown fields, forwarded to the engine like on the chat route."""
        return {k: v for k, v in (self.model_extra or {}).items() if k not in FORWARDED_EXCLUDED}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or part in ("str", "list[...]")
                                         or "[" in part or part.startswith(("literal", "function-"))):
            continue  # union branch and tag names, not fields
        elif part in ("message", "function_call", "function_call_output", "reasoning", "input_text",
                      "output_text", "input_image", "refusal", "text", "json_object", "json_schema",
                      "function") and out.endswith(("]", "format", "tool_choice")):
            continue  # discriminator tags after an index
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_responses_body(body: dict[str, Any]) -> ResponsesBody:
    for name, why in UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise BadRequest(why, param=name, code="unsupported_parameter")
    for i, t in enumerate(body.get("tools") or []):
        if isinstance(t, dict) and t.get("type") != "function":
            raise BadRequest(f"only function tools are supported by this gateway, not "
                             f"{t.get('type')!r}", param=f"tools[{i}].type", code="unsupported_tool")
    for i, item in enumerate(body.get("input") if isinstance(body.get("input"), list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in ("item_reference", "input_file") or (
                isinstance(item, dict) and isinstance(item.get("content"), list)
                and any(isinstance(p, dict) and p.get("type") == "input_file" for p in item["content"])):
            raise BadRequest("item references and file inputs are not supported by this gateway",
                             param=f"input[{i}]", code="unsupported_input")
    try:
        return ResponsesBody.model_validate(body)
    except ValidationError as exc:
        # The deepest error says most (a union's first branch fails at its top).
        err = max(exc.errors(), key=lambda e: len(_param(tuple(e.get("loc", ())))))
        param = _param(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "missing":
            raise BadRequest(f"Missing required parameter: '{param}'.", param=param,
                             code="missing_required_parameter") from exc
        raise BadRequest(f"Invalid '{param}': {msg}", param=param or None,
                         code="invalid_value") from exc
