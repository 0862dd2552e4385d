"""Deterministic pseudo-text: the tokens a simulated request will produce. Pure.

Output is a function of (prompt tokens, seed, max_tokens) alone: the same
request always yields the same text. ``seed=None`` is greedy decoding
(temperature 0): the text then depends on the prompt only. Without
``ignore_eos`` a sequence ends by itself: after a deterministic number of tokens
in ``eos_after`` (drawn from the prompt and seed) it emits the EOS token, which
counts as a completion token but adds no text, and finishes with ``"stop"``. The
tokens before EOS are the same with or without ``ignore_eos``. A stop string or
stop token may end it earlier, ``max_tokens`` always bounds it. Tokens are ids
of common English words (one token each in the tokenizer) so the text reads like
words. Log-probabilities, when asked for, are derived from the tokens alone.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from analysis.tokenizer import Tokenizer

EOS_AFTER = (2048, 4096)
"""Default range of natural output lengths (EOS included). Above every ``max_tokens``
the tests and README use without ``ignore_eos``, so those get exactly ``max_tokens``."""

_EOS_IDS = {"cl100k_base": 100257}  # <|endoftext|>; the byte fallback tokenizer uses 0 (NUL)


WORDS = (
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
class CallSpan:
    """One tool call inside a generation's tokens (see ``agent``)."""

    index: int
    id: str
    name: str
    head: int
    """The token whose arrival completes the call's opening: its name is known from then on."""
    fragments: tuple[tuple[int, str], ...]
    """(token index, text it adds to the arguments), in token order."""

    def arguments(self, produced: int) -> str:
        """The arguments text once ``produced`` tokens are out (partial when cut short)."""
        return "".join(f for i, f in self.fragments if i < produced)


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    """Tokens produced (up to and including a matched stop token, EOS or stop string)."""
    pieces: list[str]
    """Text each token contributes to the visible output (stop string trimmed)."""
    finish_reason: str
    """``"length"``, ``"stop"``, ``"tool_calls"`` or (when cut short) ``"abort"``."""
    matched_stop: str | int | None = None
    """The stop string, or the id of the stop token or EOS, that ended it."""
    calls: tuple[CallSpan, ...] = ()
    """Tool calls the tokens spell (their text is not content: ``pieces`` are empty there)."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def cut(self, produced: int, finish_reason: str) -> Generation:
        """The first ``produced`` tokens of this generation, ended by ``finish_reason``."""
        return Generation(self.token_ids[:produced], self.pieces[:produced], finish_reason, None,
                          tuple(c for c in self.calls if c.head < produced))

    def tool_calls(self, produced: int | None = None) -> list[dict[str, object]] | None:
        """OpenAI ``message.tool_calls`` once ``produced`` tokens are out; None without calls."""
        end = len(self.token_ids) if produced is None else produced
        calls = [c for c in self.calls if c.head < end]
        if not calls:
            return None
        return [{"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments(end)}} for c in calls]

    def call_deltas(self, i: int) -> list[dict[str, object]]:
        """The streamed ``delta.tool_calls`` entries token ``i`` brings (OpenAI/SGLang shape:
        the opening with id, type, name and empty arguments, then argument fragments)."""
        out: list[dict[str, object]] = []
        for c in self.calls:
            if c.head == i:
                out.append({"index": c.index, "id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": ""}})
            for j, frag in c.fragments:
                if j == i and frag:
                    out.append({"index": c.index, "function": {"arguments": frag}})
        return out

    @cached_property
    def offsets(self) -> list[int]:
        """Where each token's piece starts in ``text``."""
        ends = list(itertools.accumulate(len(p) for p in self.pieces))
        return [0, *ends[:-1]] if ends else []


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...]
    """The most likely tokens at this position, best first; the chosen token leads."""


@dataclass(frozen=True)
class _Vocab:
    words: tuple[int, ...]
    text: dict[int, str]
    period: int
    comma: int


@lru_cache(maxsize=4)
def _vocab(tok: Tokenizer) -> _Vocab:
    words = []
    for w in WORDS:
        ids = tok.encode(" " + w)
        if len(ids) == 1:
            words.append(ids[0])
    if not words:  # a byte-level tokenizer: words are letters
        words = [t for c in "etaoinshrdlucmfwyp " for t in tok.encode(c)]
    period = tok.encode(".")
    comma = tok.encode(",")
    period_id = period[0] if len(period) == 1 else words[0]
    comma_id = comma[0] if len(comma) == 1 else words[1]
    ids = [*words, period_id, comma_id]
    return _Vocab(tuple(words), {t: tok.decode([t]) for t in ids}, period_id, comma_id)


def eos_token_id(tok: Tokenizer) -> int:
    return _EOS_IDS.get(tok.name, 0)


def rng_for(prompt_ids: Sequence[int], seed: int | None, salt: str) -> random.Random:
    """A generator drawn from (prompt, seed): same request, same draws; ``salt`` separates uses."""
    return random.Random(_digest(prompt_ids, seed) + salt.encode())


def _digest(prompt_ids: Sequence[int], seed: int | None) -> bytes:
    h = hashlib.sha256(str(seed).encode())
    h.update(b"|")
    h.update(",".join(map(str, prompt_ids)).encode())
    return h.digest()


def natural_length(prompt_ids: Sequence[int], seed: int | None,
                   eos_after: tuple[int, int] = EOS_AFTER) -> int:
    """Tokens, EOS included, after which this (prompt, seed) ends by itself."""
    return _natural_length(_digest(prompt_ids, seed), eos_after)


def _natural_length(digest: bytes, eos_after: tuple[int, int]) -> int:
    lo, hi = eos_after
    if not 1 <= lo <= hi:
        raise ValueError("eos_after must be 1 <= lo <= hi")
    return lo + int.from_bytes(digest[8:16], "big") % (hi - lo + 1)


def generate(
    tok: Tokenizer,
    prompt_ids: Sequence[int],
    max_tokens: int,
    seed: int | None = 0,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    no_stop_trim: bool = False,
    eos_after: tuple[int, int] | None = None,
) -> Generation:
    """The completion of ``prompt_ids``: up to ``max_tokens`` word tokens, cut at
    EOS (unless ``eos_after`` is None, i.e. ``ignore_eos``), at the first stop
    token (kept in ``token_ids``) or stop string (text trimmed before it unless
    ``no_stop_trim``, as SGLang does). ``seed=None`` decodes greedily."""
    v = _vocab(tok)
    digest = _digest(prompt_ids, seed)
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    eos_at = _natural_length(digest, eos_after) if eos_after is not None else None
    eos = eos_token_id(tok)
    stop_ids = set(stop_token_ids)
    stops = [s for s in stop if s]
    ids: list[int] = []
    pieces: list[str] = []
    text = ""
    since_period = 0
    for i in range(max(max_tokens, 0)):
        if i + 1 == eos_at:
            ids.append(eos)
            pieces.append("")  # special tokens are skipped in the text, as SGLang does
            return Generation(ids, pieces, "stop", eos)
        since_period += 1
        if since_period > 4 and rng.random() < 0.12:
            t, since_period = v.period, 0
        elif since_period > 2 and rng.random() < 0.06:
            t = v.comma
        else:
            t = v.words[rng.randrange(len(v.words))]
        ids.append(t)
        piece = v.text[t]
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


def token_logprobs(tok: Tokenizer, token_ids: Sequence[int], top_n: int) -> list[TokenLogprob]:
    """Log-probabilities of ``token_ids`` with ``top_n`` alternatives each, deterministic
    in the tokens. The chosen token is the most likely (greedy-consistent) and the
    probabilities at a position sum to at most 1."""
    v = _vocab(tok)
    out = []
    prev = -1
    for i, t in enumerate(token_ids):
        rng = random.Random(f"{i}:{prev}:{t}")
        p = rng.uniform(0.5, 0.99)
        rest = 1.0 - p
        top = [(t, _text(tok, v, t), math.log(p))]
        alts = [w for w in rng.sample(v.words, min(top_n, len(v.words))) if w != t]
        for k, w in enumerate(alts[: max(top_n - 1, 0)]):
            top.append((w, v.text[w], math.log(rest * 0.5 ** (k + 1))))
        out.append(TokenLogprob(t, top[0][1], top[0][2], tuple(top[:top_n])))
        prev = t
    return out


def _text(tok: Tokenizer, v: _Vocab, t: int) -> str:
    s = v.text.get(t)
    return s if s is not None else tok.decode([t])
