"""Shared-prefix detection over token prompts, with hashes stable across processes.

Block hashes are chained (block i's hash covers blocks 0..i), so equal hash
at index i means equal first ``(i + 1) * block`` tokens (up to a 2**-64
collision). They use blake2b over little-endian uint32 token ids, never
Python's per-process ``hash()``, so gateway replicas can compare them.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

from .messages import content_text

__all__ = [
    "PrefixGroup",
    "block_hashes",
    "byte_block_hashes",
    "canonical_prompt",
    "common_prefix_len",
    "prefix_groups",
    "prefix_key",
]

_TYPECODE = next(t for t in "IL" if array(t).itemsize == 4)
_BIG_ENDIAN = sys.byteorder == "big"
_DIGEST = 8


def _pack(tokens: Sequence[int]) -> bytes:
    arr = array(_TYPECODE, tokens)  # OverflowError outside [0, 2**32)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def _pack_wide(tokens: Sequence[int]) -> bytes:
    """Any-int encoding for one block, used only when uint32 does not fit.

    Callers also feed block hashes (64-bit) back in as "tokens" to group
    requests they stored only hashes for. The marker byte and the different
    length keep these inputs apart from uint32-packed blocks.
    """
    try:
        return b"\xff" + b"".join(int(t).to_bytes(16, "little", signed=True) for t in tokens)
    except OverflowError:
        raise ValueError("token ids must fit in 127 bits") from None


def _block_bytes(tokens: Sequence[int], block: int, nblocks: int) -> list[bytes | memoryview]:
    try:
        data = _pack(tokens[: nblocks * block])
    except OverflowError:
        out: list[bytes | memoryview] = []
        for i in range(nblocks):
            chunk = tokens[i * block : (i + 1) * block]
            try:
                out.append(_pack(chunk))
            except OverflowError:
                out.append(_pack_wide(chunk))
        return out
    step = 4 * block
    view = memoryview(data)
    return [view[i * step : (i + 1) * step] for i in range(nblocks)]


def _chain(blocks: Sequence[bytes | memoryview]) -> list[bytes]:
    out: list[bytes] = []
    prev = b""
    for data in blocks:
        h = blake2b(prev, digest_size=_DIGEST)
        h.update(data)
        prev = h.digest()
        out.append(prev)
    return out


def block_hashes(tokens: Sequence[int], block: int) -> list[int]:
    """Chained 64-bit hashes of the full ``block``-token blocks of ``tokens``.

    A trailing partial block is not hashed. Deterministic across processes
    and machines. Token ids are normally in [0, 2**32); other ints (e.g.
    earlier block hashes) work too, on a slower path.
    """
    if block <= 0:
        raise ValueError("block must be positive")
    n = len(tokens) // block
    if n == 0:
        return []
    digests = _chain(_block_bytes(tokens, block, n))
    return [int.from_bytes(d, "little") for d in digests]


def prefix_key(tokens: Sequence[int], length: int, block: int = 32) -> str | None:
    """Hex id of the first ``length`` tokens (None if shorter); equal keys, equal prefixes."""
    if length <= 0 or len(tokens) < length:
        return None
    return _prefix_key(block_hashes(tokens[:length], block), tokens, length, block)


def _prefix_key(hashes: Sequence[int], tokens: Sequence[int], length: int, block: int) -> str:
    full = length // block
    h = blake2b(digest_size=_DIGEST)
    h.update(hashes[full - 1].to_bytes(_DIGEST, "little") if full else b"")
    h.update(b"|")
    tail = tokens[full * block : length]
    try:
        h.update(_pack(tail))
    except OverflowError:
        h.update(_pack_wide(tail))
    return h.hexdigest()


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    la = a if isinstance(a, list) else list(a)
    lb = b if isinstance(b, list) else list(b)
    n = min(len(la), len(lb))
    if la[:n] == lb[:n]:
        return n
    lo, chunk = 0, 256
    while la[lo : lo + chunk] == lb[lo : lo + chunk]:  # C-speed skip over equal chunks
        lo += chunk
    i = lo
    while la[i] == lb[i]:
        i += 1
    return i


@dataclass
class PrefixGroup:
    """Requests whose prompts share their first ``min_tokens`` tokens.

    ``shared_tokens`` is the longest prefix common to all members (>= min_tokens);
    ``key`` identifies the first ``min_tokens`` tokens (see :func:`prefix_key`).
    """

    members: list[str]
    shared_tokens: int
    key: str = field(default="")


def prefix_groups(
    prompts: Mapping[str, Sequence[int]], min_tokens: int = 256, block: int = 32
) -> list[PrefixGroup]:
    """Partition requests by their first ``min_tokens`` tokens; groups of two or more.

    Equality of the first ``min_tokens`` tokens is an equivalence, so the
    groups are disjoint: a system prompt shared by ten requests makes one group
    of ten even if five of them also share a longer document. Cost is one pass
    of block hashing over all prompts plus one block of exact comparison per
    member. Groups come in order of their first member; members in input order.
    """
    if min_tokens <= 0:
        raise ValueError("min_tokens must be positive")
    if block <= 0:
        raise ValueError("block must be positive")
    hashes: dict[str, list[int]] = {}
    buckets: dict[str, list[str]] = {}
    for rid, toks in prompts.items():
        if len(toks) < min_tokens:
            continue
        hs = block_hashes(toks, block)
        hashes[rid] = hs
        buckets.setdefault(_prefix_key(hs, toks, min_tokens, block), []).append(rid)
    groups: list[PrefixGroup] = []
    for key, members in buckets.items():
        if len(members) < 2:
            continue
        groups.append(
            PrefixGroup(members, _shared_len(members, prompts, hashes, block), key)
        )
    return groups


def _shared_len(
    members: list[str],
    prompts: Mapping[str, Sequence[int]],
    hashes: Mapping[str, list[int]],
    block: int,
) -> int:
    first = hashes[members[0]]
    depth = min(len(hashes[m]) for m in members)
    full = 0
    while full < depth and all(hashes[m][full] == first[full] for m in members):
        full += 1
    start = full * block
    ref = prompts[members[0]][start : start + block]
    extra = min(
        common_prefix_len(ref, prompts[m][start : start + block]) for m in members[1:]
    )
    return start + extra


# --------------------------------------------------------------- text prompts
#
# The gateway identifies prompts without a tokenizer: the request's messages are
# serialised canonically (role, content, tool calls; never a chat template of a
# particular model) and cut into fixed blocks of bytes, each named by a hash of
# everything up to its end. Equal leading hashes mean equal leading messages, on
# any engine and with any tokenizer; token counts are estimated from the engine's
# own reports (bytes per prompt token), not computed here.

_ROLE, _END, _EXTRA = b"\x1f", b"\x1e", b"\x1d"


def canonical_prompt(kind: str, body: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a request's prompt. ``kind``: ``chat`` (``messages``),
    ``completion`` (``prompt``: a string, strings, or token ids) or ``generate``
    (``text`` or ``input_ids``). Unknown shapes serialise to their repr, so
    identity is kept even where the meaning is not understood."""
    if kind == "chat":
        parts: list[bytes] = []
        for m in body.get("messages") or ():
            if not isinstance(m, Mapping):
                parts.append(repr(m).encode() + _END)
                continue
            parts.append(str(m.get("role", "")).encode())
            parts.append(_ROLE)
            parts.append(content_text(m.get("content")).encode())
            for key in ("name", "tool_call_id", "tool_calls", "function_call"):
                if m.get(key) is not None:
                    parts.append(_EXTRA + key.encode() + _ROLE)
                    parts.append(json.dumps(m[key], sort_keys=True, default=str).encode())
            parts.append(_END)
        return b"".join(parts)
    value = body.get("prompt") if kind == "completion" else (
        body.get("text") if body.get("text") is not None else body.get("input_ids"))
    if isinstance(value, list) and value and isinstance(value[0], (str, list)):
        value = value[0]  # a batch: the first prompt stands for the request's prefix
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        try:
            return b"\xff" + _pack(value)
        except (OverflowError, TypeError):
            return repr(value).encode()
    return b"" if value is None else repr(value).encode()


def byte_block_hashes(data: bytes, block: int, max_blocks: int = 512) -> tuple[int, ...]:
    """Chained 64-bit hashes of the full ``block``-byte blocks of ``data`` (at most
    ``max_blocks``): hash ``i`` covers bytes ``0 .. (i+1)*block``. Stable across
    processes and machines, so replicas compare them."""
    if block <= 0:
        raise ValueError("block must be positive")
    n = min(len(data) // block, max_blocks)
    h = blake2b(digest_size=_DIGEST)
    view = memoryview(data)
    out = []
    for i in range(n):
        h.update(view[i * block : (i + 1) * block])
        out.append(int.from_bytes(h.copy().digest(), "little"))
    return tuple(out)
