r"""Semantic-variable placeholders: find, validate and substitute ``{{name}}``.

Grammar (SPEC section 4), applied left to right in one pass:

- ``{{name}}`` with name ``[A-Za-z_][A-Za-z0-9_]{0,63}`` is a placeholder.
- ``\{{`` is a literal ``{{`` (the backslash is dropped). More generally a
  run of k backslashes directly before ``{{`` stands for k // 2 literal
  backslashes, and the ``{{`` is escaped iff k is odd: ``\\{{x}}`` is a
  backslash followed by the value of x, ``\\\{{`` is ``\{{``. Backslashes
  not followed by ``{{`` are ordinary characters (LaTeX, regexes and Windows
  paths pass through untouched). This keeps ``\{{`` exactly as the SPEC says
  while making every mix of literal text and placeholders expressible.
- In a run of three or more braces the placeholder opens at the last two:
  ``{{{x}}}`` is ``{``, the value of x, ``}``. After an escaped pair the
  rest of the run is read again as a run with no backslashes.
- Any other unescaped ``{{`` is an error (:class:`PlaceholderError`), never
  silently passed through: ``{{ name }}`` (spaces), ``{{}}``, ``{{a-b}}``,
  names over 64 characters and a ``{{`` with no closing ``}}``.
  Being strict turns a typo into a 400 instead of a prompt that reaches the
  engine with template debris in it; a prompt that really needs ``{{``
  writes ``\{{`` (see :func:`escape`).
- ``}}`` and single braces outside a placeholder are literal.

Substitution is single pass: substituted values are never re-scanned, so a
value containing ``{{x}}`` reaches the engine verbatim.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import BadRequest

__all__ = [
    "MAX_NAME_LEN",
    "MissingValue",
    "Placeholder",
    "PlaceholderError",
    "escape",
    "find_placeholders",
    "input_names",
    "is_valid_name",
    "scan_messages",
    "scan_prompt",
    "substitute",
    "substitute_messages",
    "substitute_prompt",
]

MAX_NAME_LEN = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# A maximal backslash run, then a maximal brace run of two or more; the
# lookbehind stops matches starting mid-run, which keeps scanning linear.
_TOKEN = re.compile(r"(?<!\\)(\\*)(\{\{+)")
_ESCAPE = re.compile(r"(?<!\\)(\\*)\{\{")  # each {{ pair, leftmost first
_TRAILING = re.compile(r"(\\+)(\{?)\Z")
_LONG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PlaceholderError(BadRequest, ValueError):
    """A malformed placeholder or content shape; maps to HTTP 400 with ``param``."""

    code = "invalid_placeholder"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


class MissingValue(PlaceholderError, KeyError):
    """Substitution found a placeholder whose variable has no value."""

    code = "missing_variable"

    def __init__(self, name: str, param: str | None = None) -> None:
        super().__init__(f"no value for variable '{name}'", param)
        self.name = name

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


@dataclass(frozen=True)
class Placeholder:
    """One ``{{name}}`` occurrence; ``start``/``end`` index its braces in ``param``'s text."""

    name: str
    param: str
    start: int
    end: int


def is_valid_name(name: str) -> bool:
    """True if ``name`` may be used as a variable name (and so in ``X-Parrot-Output``)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _clip(s: str, limit: int = 60) -> str:
    return s if len(s) <= limit else s[:limit] + "..."


def _bad_name_reason(name: str) -> str:
    if name == "":
        return "empty variable name"
    if name != name.strip() and _NAME.fullmatch(name.strip()):
        return f"spaces are not allowed inside braces; write {{{{{name.strip()}}}}}"
    if len(name) > MAX_NAME_LEN and _LONG_NAME.fullmatch(name):
        return f"variable name longer than {MAX_NAME_LEN} characters"
    return "variable names match [A-Za-z_][A-Za-z0-9_]{0,63}"


def _tokens(text: str, param: str) -> Iterator[tuple[int, str, int, int, str | None]]:
    """Yield ``(token_start, literal, start, end, name)`` per backslash+brace run, in order.

    ``literal`` is what the run's backslashes and non-placeholder braces stand
    for; ``name`` is None when the run holds no placeholder (then ``start`` is
    unused and ``end`` is the run's end).
    """
    pos = 0
    while True:
        m = _TOKEN.search(text, pos)
        if m is None:
            return
        k = len(m.group(1))
        braces = m.end() - m.start(2)
        literal = "\\" * (k // 2)
        if k % 2:
            literal += "{{"
            braces -= 2
        if braces < 2:
            yield m.start(), literal + "{" * braces, m.end(), m.end(), None
            pos = m.end()
            continue
        literal += "{" * (braces - 2)
        start = m.end() - 2
        close = text.find("}}", m.end())
        if close < 0:
            raise PlaceholderError(
                f"unterminated placeholder at offset {start} in {param}: "
                f"'{_clip(text[start:], 40)}' (write \\{{{{ for a literal {{{{)",
                param,
            )
        name = text[m.end() : close]
        if _NAME.fullmatch(name) is None:
            raise PlaceholderError(
                f"invalid placeholder '{_clip(text[start : close + 2])}' "
                f"at offset {start} in {param}: {_bad_name_reason(name)} "
                f"(write \\{{{{ for a literal {{{{)",
                param,
            )
        yield m.start(), literal, start, close + 2, name
        pos = close + 2


def find_placeholders(text: str, param: str = "text") -> list[Placeholder]:
    """All placeholders of ``text`` in order; raises :class:`PlaceholderError` on bad syntax."""
    if not isinstance(text, str):
        raise PlaceholderError(f"{param} must be a string", param)
    return [
        Placeholder(name, param, start, end)
        for _tok, _lit, start, end, name in _tokens(text, param)
        if name is not None
    ]


def _message_texts(messages: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(param, text)`` for every text a chat request carries; reject odd shapes."""
    if not isinstance(messages, list):
        raise PlaceholderError("messages must be a list", "messages")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise PlaceholderError(f"{where} must be an object", where)
        content = msg.get("content")
        where = f"{where}.content"
        if content is None:  # e.g. an assistant message with tool calls only
            continue
        if isinstance(content, str):
            yield where, content
            continue
        if not isinstance(content, list):
            raise PlaceholderError(f"{where} must be a string or a list of parts", where)
        for j, part in enumerate(content):
            pwhere = f"{where}[{j}]"
            if not isinstance(part, Mapping):
                raise PlaceholderError(f"{pwhere} must be an object", pwhere)
            if part.get("type") != "text":
                continue  # images, audio, ...: no placeholders there
            text = part.get("text")
            if not isinstance(text, str):
                raise PlaceholderError(f"{pwhere}.text must be a string", f"{pwhere}.text")
            yield f"{pwhere}.text", text


def _prompt_texts(prompt: Any) -> Iterator[tuple[str, str]]:
    """Yield ``(param, text)`` for a completions prompt; token-id prompts carry no text."""
    if isinstance(prompt, str):
        yield "prompt", prompt
        return
    if not isinstance(prompt, list):
        raise PlaceholderError("prompt must be a string or a list", "prompt")
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            yield f"prompt[{i}]", item
        elif isinstance(item, bool) or not isinstance(item, (int, list)):
            raise PlaceholderError(
                f"prompt[{i}] must be a string, a token id or a token list", f"prompt[{i}]"
            )


def scan_messages(messages: list[dict[str, Any]]) -> list[Placeholder]:
    """Placeholders of every text in a chat ``messages`` list (non-text parts ignored)."""
    out: list[Placeholder] = []
    for param, text in _message_texts(messages):
        out.extend(find_placeholders(text, param))
    return out


def scan_prompt(prompt: str | list[str]) -> list[Placeholder]:
    """Placeholders of a /v1/completions ``prompt`` (string or list of strings)."""
    out: list[Placeholder] = []
    for param, text in _prompt_texts(prompt):
        out.extend(find_placeholders(text, param))
    return out


def input_names(placeholders: Sequence[Placeholder]) -> list[str]:
    """Distinct variable names in first-occurrence order."""
    return list(dict.fromkeys(p.name for p in placeholders))


def substitute(text: str, values: Mapping[str, str], *, param: str = "text") -> str:
    """Replace each placeholder by its value and unescape ``\\{{``, in one pass.

    Raises :class:`MissingValue` (a :class:`PlaceholderError` and ``KeyError``)
    if a variable has no value, :class:`PlaceholderError` on bad syntax.
    """
    if not isinstance(text, str):
        raise PlaceholderError(f"{param} must be a string", param)
    parts: list[str] = []
    pos = 0
    for tok, literal, _start, end, name in _tokens(text, param):
        parts.append(text[pos:tok])
        parts.append(literal)
        if name is not None:
            try:
                value = values[name]
            except KeyError:
                raise MissingValue(name, param) from None
            if not isinstance(value, str):
                raise PlaceholderError(f"value of variable '{name}' must be a string", param)
            parts.append(value)
        pos = end
    if pos == 0:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def substitute_messages(
    messages: list[dict[str, Any]], values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """A deep copy of ``messages`` with every text substituted; the input is not mutated."""
    list(_message_texts(messages))  # validate shapes before copying
    out = copy.deepcopy(messages)
    for i, msg in enumerate(out):
        content = msg.get("content")
        where = f"messages[{i}].content"
        if isinstance(content, str):
            msg["content"] = substitute(content, values, param=where)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if part.get("type") == "text":
                    part["text"] = substitute(part["text"], values, param=f"{where}[{j}].text")
    return out


def substitute_prompt(prompt: str | list[Any], values: Mapping[str, str]) -> str | list[Any]:
    """Substitute a completions ``prompt``; token-id items pass through unchanged."""
    if isinstance(prompt, str):
        return substitute(prompt, values, param="prompt")
    list(_prompt_texts(prompt))  # validate
    return [
        substitute(item, values, param=f"prompt[{i}]") if isinstance(item, str) else copy.copy(item)
        for i, item in enumerate(prompt)
    ]


def escape(text: str, *, before_placeholder: bool = False) -> str:
    """Make ``text`` placeholder-free so that ``substitute(escape(s), {}) == s``.

    Each ``{{`` pair (leftmost first) gets its backslash run doubled plus one;
    nothing else changes. Pass ``before_placeholder=True`` when the result
    will be followed directly by a ``{{name}}``: a trailing backslash run (or
    one before a trailing single ``{``) is then doubled too, so it stays
    literal instead of escaping the placeholder.
    """
    out = _ESCAPE.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "{{", text)
    if before_placeholder:
        out = _TRAILING.sub(lambda m: m.group(1) * 2 + m.group(2), out)
    return out
