"""Radix tree properties: capacity, locked nodes, longest common prefix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.sim.radix import RadixCache

seqs = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=12)


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@settings(max_examples=200, deadline=None)
@given(seqs, st.lists(st.integers(0, 3), max_size=12))
def test_match_is_longest_common_prefix_without_eviction(inserted, query):
    tree = RadixCache()
    for s in inserted:
        assert tree.insert(s) == len(s)
    expect = max(lcp(query, s) for s in inserted)
    m = tree.match_prefix(query)
    assert m.length == expect
    # Every stored token sequence is a prefix of something inserted.
    for s in tree.sequences():
        assert any(x[: len(s)] == s for x in inserted)


@settings(max_examples=200, deadline=None)
@given(seqs, st.integers(1, 30), st.data())
def test_capacity_never_exceeded_and_locked_never_evicted(inserted, capacity, data):
    tree = RadixCache(capacity_tokens=capacity)
    locked: list[tuple[list[int], object]] = []
    for i, s in enumerate(inserted):
        stored = tree.insert(s, now=float(i))
        assert tree.total_tokens <= capacity
        assert 0 <= stored <= len(s)
        if stored and data.draw(st.booleans()):
            m = tree.match_prefix(s[:stored], now=float(i))
            tree.lock(m.node)
            locked.append((s[:stored], m.node))
        # Locked sequences stay fully cached whatever is inserted later.
        for seq, _ in locked:
            assert tree.match_prefix(seq).length == len(seq)
        assert tree.protected_tokens <= tree.total_tokens
    for _, node in locked:
        tree.unlock(node)  # type: ignore[arg-type]
    assert tree.protected_tokens == 0
    tree.evict(10**9)
    assert tree.total_tokens == 0


def test_lru_evicts_least_recent_first():
    tree = RadixCache()
    tree.insert([1, 1, 1], now=0)
    tree.insert([2, 2, 2], now=1)
    tree.match_prefix([1, 1, 1], now=2)  # touch: [2,2,2] is now the oldest
    assert tree.evict(1) == 3
    assert tree.match_prefix([1, 1, 1]).length == 3
    assert tree.match_prefix([2, 2, 2]).length == 0


def test_split_keeps_locks_and_reset_refuses_while_locked():
    tree = RadixCache()
    tree.insert([1, 2, 3, 4])
    m = tree.match_prefix([1, 2, 3, 4])
    tree.lock(m.node)
    tree.insert([1, 2, 9])  # splits the locked edge
    assert tree.protected_tokens == 4
    assert tree.evict(100) == 1  # only the unlocked [9] leaf goes
    assert not tree.reset()
    tree.unlock(m.node)
    assert tree.reset() and tree.total_tokens == 0
