"""compat._template: client-side template parsing and encoding agree with the gateway's parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.placeholders import find_placeholders, substitute
from compat._template import Ref, Template, TemplateError, encode, escape, parse

TEXT = st.text(alphabet=st.sampled_from(["{", "}", "\\", "a", " ", "x"]), max_size=10)


def test_parse_template_with_escapes() -> None:
    t = Template("Sum {{a}} and \\{{lit}} then {{b}}{{a}}")
    assert t.params == ["a", "b"]
    assert t.segments == ["Sum ", Ref("a"), " and {{lit}} then ", Ref("b"), Ref("a")]


@pytest.mark.parametrize("bad", ["{{ a }}", "{{}}", "{{a-b}}", "x {{a", "{{" + "a" * 65 + "}}"])
def test_bad_placeholders_are_refused_like_the_gateway(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse(bad)
    with pytest.raises(ValueError):
        find_placeholders(bad)


def test_render_inlines_text_literally_and_variables_as_placeholders() -> None:
    t = Template("Doc: {{doc}} / prev: {{prev}} / all: {{parts}}")
    user = "tricky {{x}} \\{{y}} ends with \\"
    out = t.render({"doc": user, "prev": Ref("s_1"), "parts": [Ref("m_1"), "lit {{", Ref("m_2")]})
    assert [p.name for p in find_placeholders(out)] == ["s_1", "m_1", "m_2"]
    values = {"s_1": "S", "m_1": "M1", "m_2": "M2"}
    assert substitute(out, values) == f"Doc: {user} / prev: S / all: M1\nlit {{{{\nM2"


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_encoded_text_reads_back_verbatim(a: str, b: str) -> None:
    enc = encode([a, Ref("v"), b, Ref("w"), a])
    assert [p.name for p in find_placeholders(enc)] == ["v", "w"]
    assert substitute(enc, {"v": "V", "w": "W"}) == a + "V" + b + "W" + a
    assert substitute(escape(a), {}) == a


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_parse_agrees_with_gateway_parser(a: str, b: str) -> None:
    raw = a + "{{v}}" + b
    try:
        segs = parse(raw)
    except TemplateError:
        with pytest.raises(ValueError):
            find_placeholders(raw)
        return
    names = [s.name for s in segs if isinstance(s, Ref)]
    assert names == [p.name for p in find_placeholders(raw)]
    values = {n: n.upper() for n in names}
    assert substitute(encode(segs), values) == substitute(raw, values)
