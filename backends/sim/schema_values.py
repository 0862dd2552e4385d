"""Values that validate against a JSON Schema, drawn deterministically. Pure.

What a grammar-constrained model (SGLang's xgrammar backend) would be forced
to emit, minus the understanding: the simulated engine fills tool-call
arguments and ``response_format`` outputs with these. Covered: ``type`` (and
type lists), ``enum``, ``const``, ``$ref`` into ``$defs``/``definitions``,
``anyOf``/``oneOf``/``allOf``, objects (``properties``, ``required``,
``additionalProperties``, ``min/maxProperties``), arrays (``items``,
``prefixItems``, ``min/maxItems``, ``uniqueItems``), strings (``min/maxLength``,
``pattern`` via ``rstr``, the common ``format`` values), numbers (bounds,
exclusive bounds, ``multipleOf``). Not covered: ``not``, ``if/then/else``,
``dependentSchemas``, ``patternProperties``.

Values are grounded in the prompt the way an instruction-following model's
would be, without understanding it: a string field takes the next quoted
phrase of the last user message, a number field the next number in it that
fits, an enum the member the message mentions; everything else is drawn from
the seed. So "What is magic_function(3)?" calls it with ``{"input": 3}``.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rstr.xeger import Xeger

MAX_DEPTH = 6
"""Below this nesting depth only what the schema requires is generated (recursive $refs end)."""

_QUOTED = re.compile(
    r"""(?:^|(?<=[\s(\[{:,]))(?:'([^'\n]+?)'|"([^"\n]+?)"|“([^”\n]+?)”|‘([^’\n]+?)’)(?=$|[\s.,;:!?)\]}])"""
)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\w)")
_FORMATS = {
    "date": lambda r: f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
    "date-time": lambda r: (f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
                            f"T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"),
    "email": lambda r: f"{_ident(r)}@example.com",
    "hostname": lambda r: f"{_ident(r)}.example.com",
    "uri": lambda r: f"https://example.com/{_ident(r)}",
    "url": lambda r: f"https://example.com/{_ident(r)}",
    "uuid": lambda r: "%08x-%04x-4%03x-a%03x-%012x" % (
        r.getrandbits(32), r.getrandbits(16), r.getrandbits(12), r.getrandbits(12), r.getrandbits(48)),
    "ipv4": lambda r: ".".join(str(r.randint(1, 254)) for _ in range(4)),
    "ipv6": lambda r: ":".join(f"{r.getrandbits(16):x}" for _ in range(8)),
    "duration": lambda r: f"PT{r.randint(1, 59)}M",
}


def _ident(r: random.Random) -> str:
    return "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(4, 9)))


class SchemaError(ValueError):
    """The schema is not one a value can be generated for (bad ``$ref``, not an object)."""


class _Xeger(Xeger):
    """rstr's regex sampler, with short repeats and a hash-seed independent choice."""

    def _handle_repeat(self, start_range: int, end_range: int, value: Any) -> str:
        times = self._random.randint(start_range, max(start_range, min(end_range, start_range + 6)))
        return "".join("".join(self._handle_state(i) for i in value) for _ in range(times))

    def _handle_in(self, value: Any) -> Any:
        from itertools import chain

        candidates = list(chain(*(self._handle_state(i) for i in value)))
        if candidates and candidates[0] is False:
            candidates = sorted(set(string.ascii_letters + string.digits).difference(candidates[1:]))
        return self._random.choice(candidates)


@dataclass
class Literals:
    """What the last user message offers: quoted phrases and numbers, used in order."""

    text: str = ""
    strings: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, text: str) -> Literals:
        strings = [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(text)]
        return cls(text, [s for s in strings if s.strip()], _NUMBER.findall(text))

    def take_string(self) -> str | None:
        return self.strings.pop(0) if self.strings else None

    def take_number(self, ok: Any) -> float | None:
        for i, raw in enumerate(self.numbers):
            v = float(raw)
            if ok(v):
                del self.numbers[i]
                return v
        return None

    def mentions(self, value: str) -> bool:
        return bool(value) and re.search(rf"(?<!\w){re.escape(value)}(?!\w)", self.text, re.I) is not None


class ValueGenerator:
    """Draws values for the schemas under one root (``$ref`` targets live there)."""

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str],
                 literals: Literals | None = None) -> None:
        self.root = root
        self.rng = rng
        self.words = list(words) or ["value"]
        self.literals = literals or Literals()

    def value(self, schema: Any = None, depth: int = 0) -> Any:
        return self._value(self.root if schema is None else schema, depth)

    # -- dispatch ----------------------------------------------------------------------
    def _value(self, schema: Any, depth: int) -> Any:
        if schema is True or schema == {}:
            return self._words(1, 3)
        if schema is False:
            raise SchemaError("schema 'false' admits no value")
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, not {type(schema).__name__}")
        if "$ref" in schema:
            target = self._resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self._value({**target, **rest} if rest else target, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._enum(schema["enum"])
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
                if isinstance(part, dict):
                    merged = _merge(merged, part)
            return self._value(merged, depth)
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self._value(self._branch(schema[key], depth), depth + 1)
        kind = self._type(schema, depth)
        return getattr(self, f"_{kind}")(schema, depth)

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local $refs ('#/...') are supported, not {ref!r}")
        node = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"$ref {ref!r} points nowhere")
            node = node[part]
        return node

    def _branch(self, options: list[Any], depth: int) -> Any:
        """The first option that is not null (the informative one), or null when deep."""
        def is_null(o: Any) -> bool:
            return isinstance(o, dict) and o.get("type") == "null"

        if depth >= MAX_DEPTH and any(is_null(o) for o in options):
            return next(o for o in options if is_null(o))
        return next((o for o in options if not is_null(o)), options[0])

    def _type(self, schema: dict[str, Any], depth: int) -> str:
        t = schema.get("type")
        if isinstance(t, list):
            opts = [x for x in t if x != "null"] or ["null"]
            t = "null" if depth >= MAX_DEPTH and "null" in t else opts[0]
        if t in ("object", "array", "string", "integer", "number", "boolean", "null"):
            return str(t)
        if t is not None:
            raise SchemaError(f"unknown type {t!r}")
        if "properties" in schema or "additionalProperties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return "string"

    # -- leaves --------------------------------------------------------------------------
    def _enum(self, members: list[Any]) -> Any:
        for m in members:
            if isinstance(m, str) and self.literals.mentions(m):
                return m
        return self.rng.choice(members)

    def _words(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choice(self.words) for _ in range(self.rng.randint(lo, hi)))

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        hi = int(hi) if isinstance(hi, int) else None

        def fits(s: str) -> bool:
            return len(s) >= lo and (hi is None or len(s) <= hi)

        pattern = schema.get("pattern")
        fmt = schema.get("format")
        if isinstance(pattern, str):
            rx = re.compile(pattern)
            lit = next((s for s in self.literals.strings if rx.search(s) and fits(s)), None)
            if lit is not None:
                self.literals.strings.remove(lit)
                return lit
            x = _Xeger(self.rng)
            for _ in range(20):
                s = x.xeger(pattern)
                if fits(s) and rx.search(s):
                    return s
            raise SchemaError(f"could not draw a string for pattern {pattern!r}")
        if isinstance(fmt, str) and fmt in _FORMATS:
            s = _FORMATS[fmt](self.rng)
            return s if fits(s) else _pad(s, lo, hi)
        lit = self.literals.take_string()
        s = lit if lit is not None else self._words(1, 4)
        return _pad(s, lo, hi, self._words)

    def _number(self, schema: dict[str, Any], depth: int, integer: bool = False) -> float | int:
        lo, hi, lo_open, hi_open = _bounds(schema)
        step = schema.get("multipleOf")
        step = step if isinstance(step, (int, float)) and step > 0 else None

        def ok(v: float) -> bool:
            if integer and v != int(v):
                return False
            if lo is not None and (v < lo or (lo_open and v == lo)):
                return False
            if hi is not None and (v > hi or (hi_open and v == hi)):
                return False
            return step is None or abs(v / step - round(v / step)) < 1e-9

        lit = self.literals.take_number(ok)
        if lit is not None:
            return int(lit) if integer else lit
        a = lo if lo is not None else (hi - 100 if hi is not None else 0)
        b = hi if hi is not None else a + 100
        for _ in range(50):
            if step is not None:
                k0, k1 = math.ceil(a / step), math.floor(b / step)
                v = step * self.rng.randint(k0, max(k0, k1))
            elif integer:
                v = self.rng.randint(math.ceil(a), max(math.ceil(a), math.floor(b)))
            else:
                v = round(self.rng.uniform(a, b), 2)
            if ok(v):
                return int(v) if integer else v
        for v in (a, b, (a + b) / 2, math.floor(a) + 1, math.ceil(b) - 1):  # narrow or open ranges
            if ok(v):
                return int(v) if integer else v
        raise SchemaError("no number satisfies the schema's bounds")

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        return int(self._number(schema, depth, integer=True))

    # -- containers ----------------------------------------------------------------------
    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        if items is False:
            n = len(prefix)
        elif depth >= MAX_DEPTH:
            n = lo
        else:
            n = max(lo, self.rng.randint(1, 3))
        if isinstance(hi, int):
            n = min(n, hi)
        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        for _ in range(n * 10 + 10):
            if len(out) >= n:
                break
            sub = prefix[len(out)] if len(out) < len(prefix) else items
            v = self._value(sub, depth + 1)
            if not (unique and v in out):
                out.append(v)
        return out

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or (depth < MAX_DEPTH and self.rng.random() < 0.5):
                out[name] = self._value(sub, depth + 1)
        for name in required:
            if name not in out:
                extra = schema.get("additionalProperties", True)
                out[name] = self._value(extra if isinstance(extra, dict) else True, depth + 1)
        extra = schema.get("additionalProperties")
        lo = int(schema.get("minProperties", 0))
        if isinstance(extra, dict) and not props and depth < MAX_DEPTH:
            lo = max(lo, 1)
        k = 0
        while len(out) < lo and extra is not False:
            k += 1
            out[f"{self.rng.choice(self.words)}_{k}"] = self._value(
                extra if isinstance(extra, dict) else True, depth + 1)
        return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list) and isinstance(v, list):
            out[k] = list(dict.fromkeys([*out[k], *v]))
        else:
            out[k] = v
    return out


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    lo, hi = num(schema.get("minimum")), num(schema.get("maximum"))
    lo_open = hi_open = False
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if xlo is True:  # draft-04 booleans
        lo_open = True
    elif num(xlo) is not None and (lo is None or num(xlo) >= lo):  # type: ignore[operator]
        lo, lo_open = num(xlo), True
    if xhi is True:
        hi_open = True
    elif num(xhi) is not None and (hi is None or num(xhi) <= hi):  # type: ignore[operator]
        hi, hi_open = num(xhi), True
    return lo, hi, lo_open, hi_open


def _pad(s: str, lo: int, hi: int | None, words: Any = None) -> str:
    while len(s) < lo:
        s += " " + (words(1, 2) if words else "x")
    return s[:hi] if hi is not None else s
