"""What a simulated chat request says when an agent asks: tool calls and structured output. Pure.

A request with ``tools`` calls them when ``tool_choice`` says so: ``required``
(the tools the last user message names, else one drawn from the seed), a named
function (that one), ``auto`` (the tools the last message names, when it is the
user's; otherwise, e.g. after a tool result, it answers in text), ``none``
(text). ``parallel_tool_calls: false`` keeps one call. A ``response_format`` of
``json_schema`` (strict or not) or ``json_object`` makes the content JSON.
Arguments and JSON values come from :mod:`schema_values`, seeded by the
prompt and seed like everything else the engine says.

The tokens are what a model would emit, counted honestly: tool calls are
spelled in Hermes/Qwen style (``<tool_call>{"name": ..., "arguments": ...}
</tool_call>``, which SGLang's parsers turn into ``tool_calls``), then EOS.
``max_tokens`` cuts the output like any other (finish ``length``, arguments or
JSON truncated); stop strings apply to JSON content, not to tool calls.
Grammar-constrained output ends with EOS once complete, even with
``ignore_eos`` (nothing else is allowed then).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from analysis.tokenizer import Tokenizer

from .schema_values import Literals, SchemaError, ValueGenerator
from .textgen import WORDS, CallSpan, Generation, eos_token_id, rng_for

Choice = Literal["none", "auto", "required", "function"]
_GENERIC = frozenset({"tool", "tools", "function", "func", "call", "get", "set", "make", "create",
                      "run", "use", "data", "info", "value", "the", "and", "for", "with"})


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: Any = field(default_factory=lambda: {"type": "object", "properties": {}})

    def words(self) -> list[str]:
        """The name's words that count as naming it (``get_weather`` -> ``weather``)."""
        parts = re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", self.name)
        return [p.lower() for p in parts if len(p) >= 4 and p.lower() not in _GENERIC]


@dataclass(frozen=True)
class AgentSpec:
    """The agent-protocol part of one chat request, parsed and checked."""

    tools: tuple[Tool, ...] = ()
    choice: Choice = "auto"
    forced: str | None = None
    """The function ``tool_choice`` names (``choice == "function"``)."""
    parallel: bool = True
    response_format: Literal["text", "json_object", "json_schema"] = "text"
    schema: Any = None
    last_role: str = "user"
    last_user: str = ""
    """Text of the last user message: what names tools and grounds values."""

    @property
    def active(self) -> bool:
        return bool(self.tools and self.choice != "none") or self.response_format != "text"


def named_tools(spec: AgentSpec) -> list[Tool]:
    """The tools the last user message names (whole name, or a telling word of it), by first mention."""
    text = spec.last_user.lower()
    found: list[tuple[int, Tool]] = []
    for t in spec.tools:
        hits = [m.start() for w in [t.name.lower(), *t.words()]
                for m in re.finditer(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", text)]
        if hits:
            found.append((min(hits), t))
    return [t for _, t in sorted(found, key=lambda p: p[0])]


def tools_to_call(spec: AgentSpec, rng: random.Random) -> list[Tool]:
    """Which tools this request calls (empty: it answers instead)."""
    if not spec.tools or spec.choice == "none":
        return []
    if spec.choice == "function":
        return [t for t in spec.tools if t.name == spec.forced][:1]
    named = named_tools(spec)
    if spec.choice == "auto" and spec.last_role != "user":
        named = []
    if spec.choice == "required" and not named:
        named = [rng.choice(spec.tools)]
    return named if spec.parallel else named[:1]


def pieces_of(tok: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Text each token adds; a token that ends inside a UTF-8 character adds nothing and the
    one that completes it adds the whole character, so the pieces always join to the text."""
    pieces: list[str] = []
    start = 0
    for i in range(len(ids)):
        text = tok.decode(list(ids[start: i + 1]))
        if text.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(text)
        start = i + 1
    return pieces


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Out:
    """Tokens under construction, with their content pieces and tool-call spans."""

    tok: Tokenizer
    ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    calls: list[CallSpan] = field(default_factory=list)

    def add(self, text: str, visible: bool) -> list[tuple[int, str]]:
        ids = self.tok.encode(text)
        ps = pieces_of(self.tok, ids)
        at = len(self.ids)
        self.ids += ids
        self.pieces += ps if visible else [""] * len(ids)
        return [(at + k, p) for k, p in enumerate(ps)]


def agent_generate(tok: Tokenizer, spec: AgentSpec, prompt_ids: Sequence[int], max_tokens: int,
                   seed: int | None, stop: Sequence[str] = (), no_stop_trim: bool = False,
                   ) -> Generation | None:
    """The generation of a request ``spec`` makes an agent's; None when it answers in plain
    text (the caller then generates words as for any request)."""
    rng = rng_for(prompt_ids, seed, "agent")
    literals = Literals.of(spec.last_user)
    out = _Out(tok)
    calls = tools_to_call(spec, rng)
    if calls:
        for k, t in enumerate(calls):
            args = _dumps(ValueGenerator(t.parameters, rng, WORDS, literals).value())
            out.add(("\n" if k else "") + '<tool_call>\n{"name": ' + _dumps(t.name) + ', "arguments": ',
                    visible=False)
            head = len(out.ids) - 1
            frags = out.add(args, visible=False)
            out.add("}\n</tool_call>", visible=False)
            out.calls.append(CallSpan(k, "call_" + "%024x" % rng.getrandbits(96), t.name, head,
                                      tuple(frags)))
        return _finish(out, tok, max_tokens, "tool_calls")
    if spec.response_format == "text":
        return None
    value = (ValueGenerator(spec.schema, rng, WORDS, literals).value()
             if spec.response_format == "json_schema" else _json_object(rng, literals))
    out.add(_dumps(value), visible=True)
    return _finish(out, tok, max_tokens, "stop", stop, no_stop_trim)


def _json_object(rng: random.Random, literals: Literals) -> dict[str, Any]:
    """``json_object`` without a schema: the keys the message quotes (as a model told "a JSON
    with 'setup' and 'punchline' keys" would), else one ``answer``."""
    keys = [s for s in literals.strings if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", s)]
    gen = ValueGenerator(True, rng, WORDS)
    return {k: gen.value() for k in dict.fromkeys(keys)} if keys else {"answer": gen.value()}


def _finish(out: _Out, tok: Tokenizer, max_tokens: int, natural: str, stop: Sequence[str] = (),
            no_stop_trim: bool = False) -> Generation:
    ids, pieces = out.ids, out.pieces
    limit = max(max_tokens, 0)
    hit = _stop_at(pieces, [s for s in stop if s], no_stop_trim)
    if hit is not None and hit[0] < limit:
        end, kept, matched = hit
        return Generation(ids[: end + 1], kept, "stop", matched)
    if len(ids) >= limit:
        return Generation(ids[:limit], pieces[:limit], "length",
                          calls=_cut_calls(out.calls, limit))
    eos = eos_token_id(tok)
    return Generation([*ids, eos], [*pieces, ""], natural, eos, tuple(out.calls))


def _cut_calls(calls: list[CallSpan], limit: int) -> tuple[CallSpan, ...]:
    return tuple(CallSpan(c.index, c.id, c.name, c.head, tuple(f for f in c.fragments if f[0] < limit))
                 for c in calls if c.head < limit)


def _stop_at(pieces: list[str], stops: list[str], no_stop_trim: bool
             ) -> tuple[int, list[str], str] | None:
    """(index of the token completing the first stop string, pieces trimmed there, the string)."""
    if not stops:
        return None
    text = "".join(pieces)
    found = [(i, s) for s in stops if (i := text.find(s)) >= 0]
    if not found:
        return None
    at, s = min(found)
    end_char = at + len(s)
    keep = end_char if no_stop_trim else at
    pos, kept = 0, []
    for k, p in enumerate(pieces):
        kept.append(p[: max(0, keep - pos)])
        pos += len(p)
        if pos >= end_char:
            return k, kept, s
    return None  # pragma: no cover - the stop string lies within the text


__all__ = ["AgentSpec", "SchemaError", "Tool", "agent_generate", "named_tools", "pieces_of",
           "tools_to_call"]
