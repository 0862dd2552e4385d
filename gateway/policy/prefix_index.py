"""Approximate view of what every engine's radix cache holds.

A prompt is cut into fixed blocks of token ids; block ``i`` is named by a
hash chained over blocks ``0..i``, so equal hashes mean equal prefixes. Each
engine has an LRU of the block hashes it is believed to hold, bounded by its
estimated KV capacity, and a reverse map block -> engines makes a lookup cost
O(blocks) whatever the number of engines. Blocks inserted by a dispatch are
*pending* (the engine is still computing them, owned by a leader job) until
the leader's prefill is reported done. ``observe`` corrects the estimate with
the ``cached_tokens`` an engine reports.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Match:
    """How much of a prompt one engine holds, in blocks."""

    resident: int  # leading blocks believed computed and cached
    pending: int  # blocks after those that a leader is computing right now
    leader: str | None  # job computing the deepest pending block


class PrefixIndex:
    """Per-engine block LRUs plus a block -> engines reverse map."""

    def __init__(self, block_tokens: int, min_capacity_blocks: int = 64) -> None:
        self.block_tokens = block_tokens
        self._min_cap = min_capacity_blocks
        self._owners: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._cap: dict[str, int] = {}
        self._max_cap: dict[str, int] = {}
        self._pending: dict[str, dict[int, str]] = {}

    # engines -----------------------------------------------------------------
    def add_engine(self, engine: str, capacity_tokens: int) -> None:
        blocks = max(self._min_cap, capacity_tokens // self.block_tokens)
        self._lru.setdefault(engine, OrderedDict())
        self._pending.setdefault(engine, {})
        self._cap[engine] = self._max_cap[engine] = blocks

    def remove_engine(self, engine: str) -> None:
        self.clear_engine(engine)
        for d in (self._lru, self._cap, self._max_cap, self._pending):
            d.pop(engine, None)

    def clear_engine(self, engine: str) -> None:
        """Forget an engine's cache (flush, restart)."""
        for h in self._lru.get(engine, ()):
            self._drop_owner(h, engine)
        if engine in self._lru:
            self._lru[engine].clear()
            self._pending[engine].clear()

    def blocks(self, engine: str) -> int:
        return len(self._lru.get(engine, ()))

    # lookups -----------------------------------------------------------------
    def levels(self, hashes: Sequence[int], limit: int = 4) -> list[tuple[int, set[str]]]:
        """Engines holding the longest prefixes, deepest first: ``[(blocks, engines)]``.

        One entry per depth where the set of holders shrinks; at most ``limit``.
        The returned sets are live views: do not mutate them.
        """
        owners = self._owners
        found: list[tuple[int, set[str]]] = []
        prev: set[str] | None = None
        depth = 0
        for h in hashes:
            s = owners.get(h)
            if not s:
                break
            if prev is not None and len(s) < len(prev):
                found.append((depth, prev))
            prev = s
            depth += 1
        if prev is None:
            return []
        found.append((depth, prev))
        found.reverse()
        return found[:limit]

    def match(self, engine: str, hashes: Sequence[int]) -> Match:
        """Resident and pending leading blocks of ``hashes`` on ``engine``."""
        owners = self._owners
        pend = self._pending.get(engine, {})
        resident = -1
        leader = None
        n = 0
        for h in hashes:
            s = owners.get(h)
            if not s or engine not in s:
                break
            lead = pend.get(h)
            if lead is not None:
                if resident < 0:
                    resident = n
                leader = lead
            n += 1
        if resident < 0:
            return Match(n, 0, None)
        return Match(resident, n - resident, leader)

    def is_pending(self, engine: str, h: int) -> bool:
        """Whether ``engine`` is still computing block ``h``."""
        pend = self._pending.get(engine)
        return bool(pend) and h in pend

    # updates -----------------------------------------------------------------
    def insert(self, engine: str, hashes: Sequence[int], leader: str | None = None) -> int:
        """Record that ``engine`` will hold ``hashes``; returns blocks newly pending.

        Newly seen blocks become pending under ``leader`` when one is given.
        Leaves are touched before roots, so LRU eviction drops leaves first
        as a radix cache does.
        """
        lru = self._lru.get(engine)
        if lru is None:
            return 0
        owners = self._owners
        pend = self._pending[engine]
        new = 0
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                s = owners.get(h)
                if s is None:
                    owners[h] = {engine}
                else:
                    s.add(engine)
                if leader is not None:
                    pend[h] = leader
                    new += 1
        self._evict(engine)
        return new

    def resolve(self, engine: str, hashes: Sequence[int], leader: str) -> None:
        """The leader's prefill finished: its pending blocks are now resident."""
        pend = self._pending.get(engine)
        if pend:
            for h in hashes:
                if pend.get(h) == leader:
                    del pend[h]

    def abort(self, engine: str, hashes: Sequence[int], leader: str) -> None:
        """The leader failed before prefill: the engine never computed its blocks."""
        pend = self._pending.get(engine)
        lru = self._lru.get(engine)
        if not pend or lru is None:
            return
        for h in hashes:
            if pend.get(h) == leader:
                del pend[h]
                lru.pop(h, None)
                self._drop_owner(h, engine)

    def observe(
        self,
        engine: str,
        hashes: Sequence[int],
        cached_tokens: int,
        expected_tokens: int,
        block_tokens: float | None = None,
    ) -> None:
        """Correct the estimate with the engine's reported ``cached_tokens``.

        Fewer cached tokens than predicted means the engine evicted what we
        still listed (smaller cache, other clients, flush): shrink the assumed
        capacity by the shortfall. Block boundaries and token counts are only
        estimates (hashes are over text, tokens are the engine's), so a
        shortfall within a block plus 10% of the prediction is noise, not
        eviction. An accurate prediction lets the capacity grow back.
        """
        lru = self._lru.get(engine)
        if lru is None:
            return
        per_block = block_tokens if block_tokens and block_tokens > 0 else float(self.block_tokens)
        slack = per_block + 0.1 * expected_tokens
        missing = expected_tokens - cached_tokens
        shortfall = int((missing - slack) // per_block) + 1 if missing > slack else 0
        if shortfall > 0:
            held = min(self._cap[engine], len(lru))
            self._cap[engine] = max(self._min_cap, held - shortfall)
            self._evict(engine)
        else:
            self._cap[engine] = min(self._max_cap[engine], self._cap[engine] + len(hashes) + 1)
        if hashes:
            self.insert(engine, hashes)

    # internals ---------------------------------------------------------------
    def _evict(self, engine: str) -> None:
        lru = self._lru[engine]
        cap = self._cap[engine]
        pend = self._pending[engine]
        while len(lru) > cap:
            h, _ = lru.popitem(last=False)
            pend.pop(h, None)
            self._drop_owner(h, engine)

    def _drop_owner(self, h: int, engine: str) -> None:
        s = self._owners.get(h)
        if s is not None:
            s.discard(engine)
            if not s:
                del self._owners[h]
