from __future__ import annotations

from analysis.prefix import block_hashes
from gateway.policy.prefix_index import PrefixIndex

B = 4


def toks(*parts: tuple[int, int]) -> list[int]:
    """Concatenate ranges: toks((0, 8), (100, 104)) -> 0..7, 100..103."""
    out: list[int] = []
    for a, b in parts:
        out.extend(range(a, b))
    return out


def test_block_hashes_are_chained_and_ignore_partial_tail() -> None:
    a = block_hashes(toks((0, 10)), B)
    b = block_hashes(toks((0, 8), (50, 60)), B)
    assert len(a) == 2 and len(b) == 4
    assert a == b[:2]
    # the same block content after a different prefix gets a different hash
    c = block_hashes(toks((50, 54), (4, 8)), B)
    assert c[1] != a[1]


def test_levels_and_match_find_longest_holder() -> None:
    idx = PrefixIndex(B, min_capacity_blocks=1)
    idx.add_engine("e1", 1000)
    idx.add_engine("e2", 1000)
    long = block_hashes(toks((0, 40)), B)
    short = long[:3]
    idx.insert("e1", long)
    idx.insert("e2", short)
    levels = idx.levels(long)
    assert levels[0] == (10, {"e1"})
    assert levels[1] == (3, {"e1", "e2"})
    assert idx.match("e2", long).resident == 3
    assert idx.levels(block_hashes(toks((500, 540)), B)) == []


def test_pending_blocks_resolve_or_abort() -> None:
    idx = PrefixIndex(B, min_capacity_blocks=1)
    idx.add_engine("e", 1000)
    base = block_hashes(toks((0, 12)), B)
    idx.insert("e", base)  # resident
    full = block_hashes(toks((0, 40)), B)
    assert idx.insert("e", full, leader="L") == 7
    m = idx.match("e", full)
    assert (m.resident, m.pending, m.leader) == (3, 7, "L")
    idx.abort("e", full, "L")
    assert idx.match("e", full).resident == 3 and idx.match("e", full).pending == 0
    idx.insert("e", full, leader="L2")
    idx.resolve("e", full, "L2")
    assert idx.match("e", full).resident == 10


def test_lru_evicts_leaves_first_within_capacity() -> None:
    idx = PrefixIndex(B, min_capacity_blocks=1)
    idx.add_engine("e", 10 * B)
    a = block_hashes(toks((0, 32)), B)  # 8 blocks
    b = block_hashes(toks((1000, 1024)), B)  # 6 blocks
    idx.insert("e", a)
    idx.insert("e", b)
    assert idx.blocks("e") == 10
    # the oldest chain lost its deepest blocks, kept its root
    assert idx.match("e", a).resident == 4
    assert idx.match("e", b).resident == 6


def test_observe_shrinks_capacity_on_misprediction() -> None:
    idx = PrefixIndex(B, min_capacity_blocks=1)
    idx.add_engine("e", 100 * B)
    chains = [block_hashes(toks((i * 1000, i * 1000 + 40)), B) for i in range(5)]
    for c in chains:
        idx.insert("e", c)
    assert idx.blocks("e") == 50
    # the engine reports nothing cached where we predicted 40 tokens
    idx.observe("e", chains[0], cached_tokens=0, expected_tokens=40)
    assert idx.blocks("e") <= 46
    assert idx.match("e", chains[0]).resident == 10  # just prefilled: held now


def test_remove_engine_drops_ownership() -> None:
    idx = PrefixIndex(B)
    idx.add_engine("a", 1000)
    idx.add_engine("b", 1000)
    h = block_hashes(toks((0, 16)), B)
    idx.insert("a", h)
    idx.insert("b", h)
    idx.remove_engine("a")
    assert idx.levels(h) == [(4, {"b"})]
