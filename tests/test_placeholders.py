from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.placeholders import (
    MissingValue,
    Placeholder,
    PlaceholderError,
    escape,
    find_placeholders,
    input_names,
    is_valid_name,
    scan_messages,
    scan_prompt,
    substitute,
    substitute_messages,
    substitute_prompt,
)
from common.errors import BadRequest

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,63}", fullmatch=True)
# Text biased towards the characters the grammar cares about.
texts = st.text(alphabet=st.sampled_from(list("{}\\ab_ 1\n")) | st.characters(), max_size=60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("plain", []),
        ("{{x}}", [("x", 0, 5)]),
        ("a {{x}} b {{_y9}}", [("x", 2, 7), ("_y9", 10, 17)]),
        ("{{x}}{{x}}", [("x", 0, 5), ("x", 5, 10)]),
        ("\\{{x}}", []),
        ("\\\\{{x}}", [("x", 2, 7)]),  # even run: one literal backslash, then x
        ("\\\\\\{{x}}", []),  # odd run: a backslash and an escaped {{
        ("C:\\dir\\ {{x}}", [("x", 8, 13)]),  # other backslashes are plain text
        ("}} and {x} and { {", []),
        ("{{x}}}", [("x", 0, 5)]),
        ("{{{x}}}", [("x", 1, 6)]),  # placeholder opens at the last two braces
        ("\\{{{{x}}", [("x", 3, 8)]),  # escaped pair, then a fresh run
        ("\\{{{x}}", []),
        ("{{" + "a" * 64 + "}}", [("a" * 64, 0, 68)]),
        ("\\{{not}} {{yes}}", [("yes", 9, 16)]),
    ],
)
def test_find_placeholders_table(text: str, expected: list[tuple[str, int, int]]) -> None:
    got = find_placeholders(text, "p")
    assert [(p.name, p.start, p.end) for p in got] == expected
    assert all(p.param == "p" for p in got)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{ name }}", "spaces are not allowed"),
        ("{{name }}", "spaces are not allowed"),
        ("{{}}", "empty variable name"),
        ("{{" + "a" * 65 + "}}", "longer than 64"),
        ("hello {{name", "unterminated"),
        ("{{", "unterminated"),
        ("{{a-b}}", "[A-Za-z_]"),
        ("{{1x}}", "[A-Za-z_]"),
        ("{{{ x }}}", "spaces are not allowed"),
        ('{{"json": 1}}', "[A-Za-z_]"),
    ],
)
def test_invalid_placeholders(text: str, fragment: str) -> None:
    with pytest.raises(PlaceholderError) as ei:
        find_placeholders(text, "messages[3].content")
    err = ei.value
    assert fragment in err.message
    assert err.param == "messages[3].content"
    assert isinstance(err, ValueError) and isinstance(err, BadRequest)
    assert err.status == 400 and err.body()["error"]["param"] == "messages[3].content"
    with pytest.raises(PlaceholderError):
        substitute(text, {"name": "v", "x": "v"})


def test_scan_messages_params_and_parts() -> None:
    messages = [
        {"role": "system", "content": "You are {{persona}}."},
        {"role": "assistant", "content": None, "tool_calls": []},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "{{not_scanned}}"}},
                {"type": "text", "text": "Summarise {{doc}} as {{persona}}"},
            ],
        },
    ]
    got = scan_messages(messages)
    assert got == [
        Placeholder("persona", "messages[0].content", 8, 19),
        Placeholder("doc", "messages[2].content[1].text", 10, 17),
        Placeholder("persona", "messages[2].content[1].text", 21, 32),
    ]
    assert input_names(got) == ["persona", "doc"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0]"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 3}]}],
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"content": "ok"}, {"content": "{{ bad }}"}], "messages[1].content"),
    ],
)
def test_scan_messages_bad_shapes(messages: object, param: str) -> None:
    with pytest.raises(PlaceholderError) as ei:
        scan_messages(messages)  # type: ignore[arg-type]
    assert ei.value.param == param


def test_scan_prompt() -> None:
    assert scan_prompt("a {{x}}") == [Placeholder("x", "prompt", 2, 7)]
    assert [p.param for p in scan_prompt(["{{a}}", "b", "{{c}}"])] == ["prompt[0]", "prompt[2]"]
    assert scan_prompt([1, 2, 3]) == [] and scan_prompt([[1, 2], [3]]) == []
    with pytest.raises(PlaceholderError) as ei:
        scan_prompt(["ok", "{{ x }}"])
    assert ei.value.param == "prompt[1]"
    with pytest.raises(PlaceholderError) as ei:
        scan_prompt({"x": 1})  # type: ignore[arg-type]
    assert ei.value.param == "prompt"


def test_substitute_single_pass_and_unescape() -> None:
    assert substitute("a {{x}} \\{{y}} {{z}}", {"x": "{{z}}", "z": "\\{{"}) == "a {{z}} {{y}} \\{{"
    assert substitute("{{{x}}}|\\{{{x}}|{{{{x}}", {"x": "V"}) == "{V}|{{{x}}|{{V"
    assert substitute("\\\\{{x}}|\\\\\\{{x}}|\\n{{x}}", {"x": "V"}) == "\\V|\\{{x}}|\\nV"
    assert substitute("no placeholders", {}) == "no placeholders"
    with pytest.raises(MissingValue) as ei:
        substitute("{{a}} {{b}}", {"a": "1"}, param="prompt")
    assert ei.value.name == "b" and ei.value.param == "prompt"
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, PlaceholderError)
    assert "'b'" in str(ei.value)
    with pytest.raises(PlaceholderError):
        substitute("{{a}}", {"a": 1})  # type: ignore[dict-item]


def test_substitute_messages_does_not_mutate() -> None:
    messages = [
        {"role": "system", "content": "be {{tone}}"},
        {"role": "user", "content": [{"type": "text", "text": "{{q}}"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None},
    ]
    before = copy.deepcopy(messages)
    out = substitute_messages(messages, {"tone": "brief", "q": "why?"})
    assert messages == before
    assert out == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "why?"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None},
    ]
    out[1]["content"][1]["type"] = "changed"
    assert messages == before
    with pytest.raises(MissingValue) as ei:
        substitute_messages(messages, {"tone": "x"})
    assert ei.value.param == "messages[1].content[0].text"


def test_substitute_prompt() -> None:
    assert substitute_prompt("{{a}}!", {"a": "x"}) == "x!"
    assert substitute_prompt(["{{a}}", [1, 2]], {"a": "x"}) == ["x", [1, 2]]


@given(texts)
@settings(max_examples=400, deadline=None)
def test_escape_round_trip(s: str) -> None:
    escaped = escape(s)
    assert find_placeholders(escaped) == []
    assert substitute(escaped, {}) == s


@given(st.lists(st.tuples(texts, names), max_size=5), texts, st.data())
@settings(max_examples=200, deadline=None)
def test_parser_finds_exactly_the_inserted_placeholders(
    pieces: list[tuple[str, str]], tail: str, data: st.DataObject
) -> None:
    text, expected, values, plain = "", [], {}, ""
    for lit, name in pieces:
        text += escape(lit, before_placeholder=True)
        plain += lit
        start = len(text)
        text += "{{" + name + "}}"
        expected.append((name, start, len(text)))
        values[name] = data.draw(texts)
    text += escape(tail)
    got = find_placeholders(text, "t")
    assert [(p.name, p.start, p.end) for p in got] == expected
    assert all(text[p.start : p.end] == "{{" + p.name + "}}" for p in got)
    want = "".join(lit + values[name] for lit, name in pieces) + tail
    assert substitute(text, values) == want


@given(texts)
@settings(max_examples=300, deadline=None)
def test_parser_never_crashes(s: str) -> None:
    try:
        found = find_placeholders(s)
    except PlaceholderError as e:
        assert e.param == "text"
    else:
        for p in found:
            assert s[p.start : p.end] == "{{" + p.name + "}}" and is_valid_name(p.name)
        assert substitute(s, {p.name: "" for p in found}) is not None


def test_escape_examples() -> None:
    assert escape("{{x}}") == "\\{{x}}"
    assert escape("\\{{") == "\\\\\\{{"
    assert escape("a\\b }} {") == "a\\b }} {"
    assert escape("end\\") == "end\\"
    assert escape("end\\", before_placeholder=True) == "end\\\\"
    assert escape("end\\{", before_placeholder=True) == "end\\\\{"
    assert escape("{{{", before_placeholder=True) == "\\{{{"
    text = escape("path C:\\", before_placeholder=True) + "{{x}}"
    assert substitute(text, {"x": "dir"}) == "path C:\\dir"


def test_pathological_inputs_are_linear() -> None:
    assert find_placeholders("\\" * 200_001 + "{" * 3) == []
    assert find_placeholders("\\" * 200_000 + "a") == []
    assert len(find_placeholders("{{a}}" * 20_000)) == 20_000


def test_is_valid_name() -> None:
    assert is_valid_name("a") and is_valid_name("_x1") and is_valid_name("a" * 64)
    for bad in ("", "1a", "a-b", "a" * 65, "a b", "é"):
        assert not is_valid_name(bad)
