"""Deterministic pseudo-text: the tokens a simulated request will produce.

Output is a function of (prompt tokens, seed, max_tokens) alone: the same
request always yields the same text, with exactly ``max_tokens`` tokens unless
a stop string or stop token ends it first. Tokens are ids of common English
words (one token each in the tokenizer) so the text reads like words.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from analysis.tokenizer import Tokenizer

_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or "
    "by one had not but what all were when we there can an your which their said if do will "
    "each about how up out them then she many some so these would other into has more her two "
    "like him see time could no make than first been its who now people my made over did down "
    "only way find use may water long little very after words called just where most know get "
    "through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well "
    "such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own "
    "under read last never us left end along while might next sound below saw something thought "
    "both few those always looked show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animals life enough "
    "took sometimes four head above kind began almost live page got earth need far hand high year "
    "mother light parts country father let night following picture being study second eyes soon "
    "times story boys since white days ever paper hard near sentence better best across during "
    "today others however sure means knew try told young miles sun ways thing whole hear example "
    "heard several change answer room sea against top turned learn point city play toward five "
    "using himself usually money seen car morning given"
).split()


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    """Tokens produced (up to and including a matched stop token or string)."""
    pieces: list[str]
    """Text each token contributes to the visible output (stop string trimmed)."""
    finish_reason: str
    """``"length"`` or ``"stop"``."""
    matched_stop: str | int | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@lru_cache(maxsize=4)
def _vocab(tok: Tokenizer) -> tuple[tuple[int, ...], int, int]:
    words = []
    for w in _WORDS:
        ids = tok.encode(" " + w)
        if len(ids) == 1:
            words.append(ids[0])
    period = tok.encode(".")
    comma = tok.encode(",")
    period_id = period[0] if len(period) == 1 else words[0]
    comma_id = comma[0] if len(comma) == 1 else words[1]
    return tuple(words), period_id, comma_id


def _rng(prompt_ids: Sequence[int], seed: int) -> random.Random:
    h = hashlib.sha256(str(seed).encode())
    h.update(b"|")
    h.update(",".join(map(str, prompt_ids)).encode())
    return random.Random(int.from_bytes(h.digest()[:8], "big"))


def generate(
    tok: Tokenizer,
    prompt_ids: Sequence[int],
    max_tokens: int,
    seed: int = 0,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    no_stop_trim: bool = False,
) -> Generation:
    """The completion of ``prompt_ids``: ``max_tokens`` word tokens, cut at the
    first stop token (kept in ``token_ids``) or stop string (text trimmed
    before it unless ``no_stop_trim``, as SGLang does)."""
    words, period, comma = _vocab(tok)
    rng = _rng(prompt_ids, seed)
    stop_ids = set(stop_token_ids)
    stops = [s for s in stop if s]
    ids: list[int] = []
    pieces: list[str] = []
    text = ""
    since_period = 0
    for _ in range(max(max_tokens, 0)):
        since_period += 1
        if since_period > 4 and rng.random() < 0.12:
            t, since_period = period, 0
        elif since_period > 2 and rng.random() < 0.06:
            t = comma
        else:
            t = words[rng.randrange(len(words))]
        ids.append(t)
        piece = tok.decode([t])
        if t in stop_ids:
            pieces.append("" if not no_stop_trim else piece)
            return Generation(ids, pieces, "stop", t)
        before = len(text)
        text += piece
        hit = _first_stop(text, stops, max(0, before - max((len(s) for s in stops), default=0)))
        if hit is not None:
            at, s = hit
            end = at + len(s) if no_stop_trim else at
            # Earlier pieces may already hold part of the stop string: trim them back.
            keep = end
            out: list[str] = []
            pos = 0
            for p in pieces + [piece]:
                take = p[: max(0, keep - pos)]
                out.append(take)
                pos += len(p)
            return Generation(ids, out, "stop", s)
        pieces.append(piece)
    return Generation(ids, pieces, "length")


def _first_stop(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def normalize_stop(stop: Any) -> list[str]:
    """OpenAI's ``stop``: None, a string or a list of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ValueError("stop must be a string or a list of strings")
