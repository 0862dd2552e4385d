from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.prefix import (
    PrefixGroup,
    block_hashes,
    common_prefix_len,
    prefix_groups,
    prefix_key,
)


def toks(n: int, seed: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(128_000) for _ in range(n)]


def test_block_hashes_chain_and_partial_block() -> None:
    a = toks(100, 1)
    h = block_hashes(a, 32)
    assert len(h) == 3  # the trailing 4 tokens are not hashed
    assert all(isinstance(x, int) and 0 <= x < 2**64 for x in h)
    assert block_hashes(a[:96], 32) == h
    assert block_hashes(a[:31], 32) == []
    # chained: changing block 0 changes every later hash; changing block 2 only the last
    b = [a[0] + 1] + a[1:]
    assert all(x != y for x, y in zip(block_hashes(b, 32), h))
    c = a[:70] + [a[70] + 1] + a[71:]
    assert block_hashes(c, 32)[:2] == h[:2] and block_hashes(c, 32)[2] != h[2]
    # equal blocks at different positions hash differently (position via the chain)
    rep = a[:32] * 3
    assert len(set(block_hashes(rep, 32))) == 3
    assert block_hashes(tuple(a), 32) == h  # any sequence type
    with pytest.raises(ValueError):
        block_hashes(a, 0)
    with pytest.raises(ValueError):
        block_hashes([2**200] * 32, 32)


def test_block_hashes_of_wide_ints() -> None:
    """Stored block hashes (64-bit) can be fed back in, e.g. with block=1."""
    a = toks(64, 2)
    wide = block_hashes(a, 8)
    assert len(block_hashes(wide, 1)) == 8
    assert block_hashes([-1, 5], 1)[1] != block_hashes([2**32 - 1, 5], 1)[1]
    # blocks that fit uint32 hash the same whether or not another block is wide
    mixed = a[:32] + [2**40] * 32
    assert block_hashes(mixed, 32)[0] == block_hashes(a, 32)[0]
    assert block_hashes(mixed, 32)[1] != block_hashes(a, 32)[1]
    g1 = block_hashes(a[:32] + toks(32, 5), 8)
    g2 = block_hashes(a[:32] + toks(32, 6), 8)
    (grp,) = prefix_groups({"x": g1, "y": g2, "z": wide[:1]}, min_tokens=2, block=1)
    assert grp.members == ["x", "y"] and grp.shared_tokens == 4


def test_block_hashes_stable_across_processes() -> None:
    a = toks(256, 3)
    code = (
        "from analysis.prefix import block_hashes; import random;"
        "r = random.Random(3); print(block_hashes([r.randrange(128000) for _ in range(256)], 32))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert out.strip() == str(block_hashes(a, 32))


def test_block_hashes_is_fast() -> None:
    a = toks(8192, 4)
    block_hashes(a, 32)
    t0 = time.perf_counter()
    for _ in range(20):
        block_hashes(a, 32)
    per_call = (time.perf_counter() - t0) / 20
    assert per_call < 0.005  # ~0.2 ms measured on one core; slack for busy CI


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [
        ([], [], 0),
        ([1, 2, 3], [], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2, 3], [1, 9, 3], 1),
        ((1, 2, 3), [1, 2, 4], 2),
        (list(range(1000)), list(range(700)) + [0], 700),
        (list(range(1000)), list(range(1000)), 1000),
    ],
)
def test_common_prefix_len(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix_len(a, b) == n == common_prefix_len(b, a)


@given(st.lists(st.integers(0, 3), max_size=600), st.lists(st.integers(0, 3), max_size=600))
@settings(max_examples=200, deadline=None)
def test_common_prefix_len_property(a: list[int], b: list[int]) -> None:
    n = common_prefix_len(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]


def test_prefix_groups_system_prompt_and_document() -> None:
    system = toks(300, 10)
    doc = toks(2000, 11)
    prompts = {f"q{i}": system + doc + toks(40, 100 + i) for i in range(5)}
    prompts.update({f"s{i}": system + toks(500, 200 + i) for i in range(3)})
    prompts["lone"] = toks(1000, 12)
    prompts["short"] = system[:100]
    groups = prefix_groups(prompts, min_tokens=256, block=32)
    assert len(groups) == 1
    (g,) = groups
    assert g.members == ["q0", "q1", "q2", "q3", "q4", "s0", "s1", "s2"]
    assert g.shared_tokens == 300
    assert g.key == prefix_key(system, 256, 32)
    # only the document readers, with the longest shared prefix
    doc_only = {k: v for k, v in prompts.items() if k.startswith("q")}
    (g2,) = prefix_groups(doc_only, min_tokens=256, block=32)
    assert g2.shared_tokens == 2300 and g2.members == ["q0", "q1", "q2", "q3", "q4"]


def test_prefix_groups_exact_threshold_and_odd_sizes() -> None:
    base = toks(400, 20)
    prompts = {
        "a": base[:100] + [1] + base[101:],  # diverges at token 100
        "b": base[:100] + [2] + base[101:],
        "c": base[:99] + [3] + base[100:],  # diverges at 99: below the threshold
        "d": list(base[:100]),  # exactly min_tokens long
    }
    groups = prefix_groups(prompts, min_tokens=100, block=32)
    assert groups == [PrefixGroup(["a", "b", "d"], 100, prefix_key(base, 100, 32) or "")]
    # threshold smaller than a block
    small = {"x": [5, 6, 7, 8], "y": [5, 6, 7, 9], "z": [5, 0]}
    groups = prefix_groups(small, min_tokens=3, block=32)
    assert [(g.members, g.shared_tokens) for g in groups] == [(["x", "y"], 3)]
    # identical prompts share everything
    same = prefix_groups({"p": base, "q": list(base)}, min_tokens=256, block=16)
    assert [(g.members, g.shared_tokens) for g in same] == [(["p", "q"], 400)]


def test_prefix_groups_several_groups_in_order() -> None:
    p1, p2 = toks(300, 30), toks(300, 31)
    prompts = {
        "b1": p2 + [1],
        "a1": p1 + [1],
        "a2": p1 + [2, 3],
        "b2": p2 + [1, 5],
        "solo": toks(300, 32),
    }
    groups = prefix_groups(prompts)
    got = [(g.members, g.shared_tokens) for g in groups]
    assert got == [(["b1", "b2"], 301), (["a1", "a2"], 300)]
    assert groups[0].key != groups[1].key
    assert prefix_groups({}) == []
    with pytest.raises(ValueError):
        prefix_groups(prompts, min_tokens=0)


@given(
    st.lists(st.integers(0, 2), min_size=0, max_size=40),
    st.lists(st.lists(st.integers(0, 2), max_size=20), min_size=1, max_size=6),
    st.integers(1, 30),
    st.integers(1, 8),
)
@settings(max_examples=200, deadline=None)
def test_prefix_groups_match_brute_force(
    stem: list[int], tails: list[list[int]], min_tokens: int, block: int
) -> None:
    prompts = {f"r{i}": stem + t for i, t in enumerate(tails)}
    groups = prefix_groups(prompts, min_tokens=min_tokens, block=block)
    # brute force: partition by the first min_tokens tokens
    buckets: dict[tuple[int, ...], list[str]] = {}
    for rid, p in prompts.items():
        if len(p) >= min_tokens:
            buckets.setdefault(tuple(p[:min_tokens]), []).append(rid)
    expected = []
    for members in buckets.values():
        if len(members) >= 2:
            shared = min(common_prefix_len(prompts[members[0]], prompts[m]) for m in members[1:])
            expected.append((members, shared))
    assert [(g.members, g.shared_tokens) for g in groups] == expected


def test_prefix_groups_scale() -> None:
    shared = toks(4096, 40)
    prompts = {f"r{i}": shared + toks(4096, 1000 + i) for i in range(64)}
    t0 = time.perf_counter()
    (g,) = prefix_groups(prompts)
    assert time.perf_counter() - t0 < 1.0
    assert len(g.members) == 64 and g.shared_tokens >= 4096


# -- tokenizer-free prompt identity -------------------------------------------------

from analysis.prefix import byte_block_hashes, canonical_prompt  # noqa: E402


def _chat(*msgs: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in msgs]}


def test_equal_leading_messages_give_equal_leading_hashes() -> None:
    system = "You are a careful assistant. " * 40
    a = byte_block_hashes(canonical_prompt("chat", _chat(("system", system), ("user", "q1" * 64))), 64)
    b = byte_block_hashes(canonical_prompt("chat", _chat(("system", system), ("user", "q2" * 64))), 64)
    shared = len(("system\x1f" + system + "\x1euser\x1fq").encode()) // 64
    assert a[:shared] == b[:shared] and len(a) == len(b) > shared
    assert all(x != y for x, y in zip(a[shared + 1:], b[shared + 1:]))


def test_roles_content_parts_and_tool_calls_are_part_of_the_identity() -> None:
    base = canonical_prompt("chat", _chat(("user", "hello")))
    assert canonical_prompt("chat", _chat(("system", "hello"))) != base
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hel"},
                                                         {"type": "text", "text": "lo"}]}]}
    assert canonical_prompt("chat", parts) == base  # content parts read as their text
    call = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}
    other = {"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}]}
    assert canonical_prompt("chat", call) != canonical_prompt("chat", other)


def test_completion_and_generate_prompts() -> None:
    assert canonical_prompt("completion", {"prompt": "abc"}) == b"abc"
    assert canonical_prompt("completion", {"prompt": ["abc", "zzz"]}) == b"abc"
    ids = canonical_prompt("completion", {"prompt": [1, 2, 3]})
    assert ids != b"abc" and ids == canonical_prompt("generate", {"input_ids": [1, 2, 3]})
    assert canonical_prompt("generate", {"text": "abc"}) == b"abc"


def test_byte_block_hashes_are_stable_across_processes() -> None:
    import subprocess
    import sys

    code = ("from analysis.prefix import byte_block_hashes as h; "
            "print(h(b'x' * 300 + b'y' * 300, 128))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=str(__import__("pathlib").Path(
                               __file__).resolve().parents[1])).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1
    assert str(byte_block_hashes(b"x" * 300 + b"y" * 300, 128)) == outs.pop().strip()
    assert len(byte_block_hashes(b"a" * 1000, 128, max_blocks=3)) == 3


def test_token_estimate_learns_the_engines_bytes_per_token() -> None:
    from gateway.completion import TokenEstimate

    est = TokenEstimate(initial=4.0, alpha=0.5)
    assert est.tokens(400) == 100
    for _ in range(20):
        est.observe(1000, 1000)  # a byte-level tokenizer
    assert abs(est.bytes_per_token - 1.0) < 0.01 and est.tokens(400) == 400
    est.observe(0, 10)
    est.observe(100, None)
    assert abs(est.bytes_per_token - 1.0) < 0.01
