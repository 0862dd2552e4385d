"""Which live replica owns a session: rendezvous (highest-random-weight) hashing.

Every replica computes the owner from the same inputs (the session id and the
live replicas that accept forwarded requests, both read from Redis), so they
agree without a round trip. When a replica joins or leaves, only the sessions
it gains or held move; the others keep their owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b


def _weight(replica: str, session: str) -> int:
    digest = blake2b(f"{replica}\0{session}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(session: str, replicas: Iterable[str]) -> str | None:
    """The replica with the highest weight for ``session``; None when there is none."""
    best, best_w = None, -1
    for r in replicas:
        w = _weight(r, session)
        if w > best_w or (w == best_w and best is not None and r < best):
            best, best_w = r, w
    return best


__all__ = ["owner"]
