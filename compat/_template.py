r"""Prompt templates with ``{{name}}`` placeholders, parsed and re-encoded client-side.

Same grammar as the gateway (SPEC section 4): ``{{name}}`` is a placeholder
(name ``[A-Za-z_][A-Za-z0-9_]{0,63}``), ``\{{`` a literal ``{{``; a run of k
backslashes before ``{{`` stands for k // 2 backslashes and escapes the pair
iff k is odd; in a run of three or more braces the placeholder takes the
last two. A template is parsed into literal text and references; rendering
puts user text in as literal text (escaped, so a user's ``{{`` can never
become a placeholder) and variables in as ``{{name}}``. Pure code, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

__all__ = ["Ref", "Template", "TemplateError", "escape", "is_valid_name", "parse"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RUN = re.compile(r"(?<!\\)(\\*)(\{\{+)")
_PAIR = re.compile(r"(?<!\\)(\\*)\{\{")
_TAIL = re.compile(r"(\\+)(\{?)\Z")


class TemplateError(ValueError):
    """A malformed placeholder in a template (the gateway would answer 400)."""


@dataclass(frozen=True)
class Ref:
    """A reference to session variable ``name``; rendered as ``{{name}}``."""

    name: str


Segment = Union[str, Ref]
Value = Union[str, Ref, Sequence[Union[str, Ref]]]


def is_valid_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def parse(text: str) -> list[Segment]:
    """Split ``text`` into unescaped literal strings and :class:`Ref` placeholders."""
    out: list[Segment] = []
    pos = 0
    lit: list[str] = []
    while (m := _RUN.search(text, pos)) is not None:
        lit.append(text[pos : m.start()])
        k, braces = len(m.group(1)), len(m.group(2))
        lit.append("\\" * (k // 2))
        if k % 2:
            lit.append("{{")
            braces -= 2
        if braces < 2:
            lit.append("{" * braces)
            pos = m.end()
            continue
        lit.append("{" * (braces - 2))
        close = text.find("}}", m.end())
        name = text[m.end() : close] if close >= 0 else ""
        if close < 0 or not is_valid_name(name):
            snippet = text[m.end() - 2 : (close + 2 if close >= 0 else m.end() + 30)]
            raise TemplateError(
                f"invalid placeholder {snippet!r} (write \\{{{{ for a literal {{{{)"
            )
        out.append("".join(lit))
        lit = []
        out.append(Ref(name))
        pos = close + 2
    lit.append(text[pos:])
    out.append("".join(lit))
    return [s for s in out if s != ""]


def escape(text: str, *, before_placeholder: bool = False) -> str:
    """Encode literal ``text`` so the gateway reads it back verbatim, with no placeholders.

    ``before_placeholder=True`` when a ``{{name}}`` follows directly: a
    trailing backslash run (or one before a trailing ``{``) is doubled too.
    """
    out = _PAIR.sub(lambda m: "\\" * (2 * len(m.group(1)) + 1) + "{{", text)
    if before_placeholder:
        out = _TAIL.sub(lambda m: m.group(1) * 2 + m.group(2), out)
    return out


def encode(segments: Sequence[Segment]) -> str:
    """Join literal text and references into gateway template text."""
    merged: list[Segment] = []
    for seg in segments:
        if isinstance(seg, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + seg
        elif seg != "":
            merged.append(seg)
    parts: list[str] = []
    for i, seg in enumerate(merged):
        if isinstance(seg, Ref):
            parts.append("{{" + seg.name + "}}")
        else:
            nxt_ref = i + 1 < len(merged) and isinstance(merged[i + 1], Ref)
            parts.append(escape(seg, before_placeholder=nxt_ref))
    return "".join(parts)


class Template:
    """A parsed prompt template; ``params`` are its placeholder names in first-use order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.segments = parse(text)
        self.params = list(dict.fromkeys(s.name for s in self.segments if isinstance(s, Ref)))

    def render(self, values: Mapping[str, Value], *, joiner: str = "\n") -> str:
        """Gateway text with each placeholder replaced by its value.

        A ``str`` value is inlined as literal text, a :class:`Ref` stays a
        placeholder, and a sequence of them is joined with ``joiner``.
        """
        out: list[Segment] = []
        for seg in self.segments:
            if isinstance(seg, str):
                out.append(seg)
                continue
            value = values[seg.name]
            if isinstance(value, (str, Ref)):
                out.append(value)
                continue
            for j, item in enumerate(value):
                if j:
                    out.append(joiner)
                if not isinstance(item, (str, Ref)):
                    raise TypeError(f"{seg.name}: items must be str or Variable, got {type(item)}")
                out.append(item)
        return encode(out)
