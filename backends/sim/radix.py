"""A radix tree over token ids: the prefix cache of RadixAttention.

Each edge holds a run of token ids; a node's tokens stay cached while any
request references it (``lock``), and unreferenced leaves are evicted least
recently used first. Pure: callers pass ``now`` for LRU order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    key: list[int] = field(default_factory=list)
    parent: Node | None = None
    children: dict[int, Node] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: float = 0.0


@dataclass(frozen=True)
class Match:
    """Result of ``match_prefix``: ``length`` cached tokens ending at ``node``."""

    length: int
    node: Node
    nodes: tuple[Node, ...]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: long shared prompts make this the hot path.
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixCache:
    """Token-id radix tree with reference counts and LRU eviction.

    ``capacity_tokens`` (optional) bounds the tokens held by the tree: ``insert``
    evicts unreferenced leaves to make room and stores only what fits.
    """

    def __init__(self, capacity_tokens: int | None = None) -> None:
        self.capacity_tokens = capacity_tokens
        self.root = Node(lock_ref=1)
        self.total_tokens = 0
        self.protected_tokens = 0  # tokens in nodes with lock_ref > 0
        self._tie = itertools.count()

    @property
    def evictable_tokens(self) -> int:
        return self.total_tokens - self.protected_tokens

    # -- lookup -------------------------------------------------------------
    def match_prefix(self, tokens: Sequence[int], now: float = 0.0) -> Match:
        """Longest cached prefix of ``tokens``; splits a node on a partial edge
        match so the returned node ends exactly at the match."""
        node = self.root
        nodes: list[Node] = []
        i = 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.key, tokens[i:])
            child.last_access = now
            if k < len(child.key):
                child = self._split(child, k)
            nodes.append(child)
            node = child
            i += k
        return Match(i, node, tuple(nodes))

    def _split(self, child: Node, k: int) -> Node:
        parent = child.parent
        assert parent is not None
        head = Node(
            key=child.key[:k],
            parent=parent,
            lock_ref=child.lock_ref,
            last_access=child.last_access,
        )
        parent.children[head.key[0]] = head
        child.key = child.key[k:]
        child.parent = head
        head.children[child.key[0]] = child
        return head

    # -- insert -------------------------------------------------------------
    def insert(self, tokens: Sequence[int], now: float = 0.0) -> int:
        """Cache ``tokens``; returns how many of them are cached afterwards
        (less than ``len(tokens)`` only when the capacity is exhausted by
        referenced nodes)."""
        m = self.match_prefix(tokens, now)
        rest = len(tokens) - m.length
        if rest == 0:
            return m.length
        if self.capacity_tokens is not None:
            self.lock(m.node)  # keep our own path while making room
            free = self.capacity_tokens - self.total_tokens
            if free < rest:
                self.evict(rest - free)
                free = self.capacity_tokens - self.total_tokens
            self.unlock(m.node)
            rest = min(rest, max(free, 0))
            if rest == 0:
                return m.length
        new = Node(key=list(tokens[m.length : m.length + rest]), parent=m.node, last_access=now)
        m.node.children[new.key[0]] = new
        self.total_tokens += rest
        return m.length + rest

    # -- references ---------------------------------------------------------
    def lock(self, node: Node) -> None:
        """Reference ``node`` and its ancestors: none of them can be evicted."""
        n: Node | None = node
        while n is not None and n is not self.root:
            if n.lock_ref == 0:
                self.protected_tokens += len(n.key)
            n.lock_ref += 1
            n = n.parent

    def unlock(self, node: Node) -> None:
        n: Node | None = node
        while n is not None and n is not self.root:
            if n.lock_ref <= 0:
                raise ValueError("unlock of an unreferenced node")
            n.lock_ref -= 1
            if n.lock_ref == 0:
                self.protected_tokens -= len(n.key)
            n = n.parent

    # -- eviction -----------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Drop unreferenced leaves, least recently used first, until at least
        ``num_tokens`` are freed or nothing evictable is left. Returns tokens freed."""
        heap = [
            (n.last_access, next(self._tie), n)
            for n in self._leaves()
            if n.lock_ref == 0
        ]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[0]]
            freed += len(leaf.key)
            self.total_tokens -= len(leaf.key)
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(self._tie), parent))
        return freed

    def _leaves(self) -> list[Node]:
        out: list[Node] = []
        stack = [self.root]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            elif n is not self.root:
                out.append(n)
        return out

    def reset(self) -> bool:
        """Drop everything (``/flush_cache``); refused (False) while any node is referenced."""
        if self.protected_tokens:
            return False
        self.root = Node(lock_ref=1)
        self.total_tokens = 0
        return True

    def sequences(self) -> list[list[int]]:
        """Every root-to-leaf token sequence (for tests and debugging)."""
        out: list[list[int]] = []
        stack: list[tuple[Node, list[int]]] = [(self.root, [])]
        while stack:
            n, acc = stack.pop()
            acc = acc + n.key
            if n.children:
                stack.extend((c, acc) for c in n.children.values())
            else:
                out.append(acc)
        return out
