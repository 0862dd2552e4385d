"""What a simulated request says: seeds, greedy decoding, EOS, stop strings, log-probabilities."""

from __future__ import annotations

import math

import pytest

from analysis.tokenizer import get_tokenizer
from backends.sim.textgen import eos_token_id, generate, natural_length, token_logprobs

TOK = get_tokenizer()
PROMPT = TOK.encode("Tell me a story about a parrot.")


def test_seed_changes_the_text_and_greedy_ignores_it():
    a, b = generate(TOK, PROMPT, 20, seed=1), generate(TOK, PROMPT, 20, seed=2)
    assert a.text != b.text
    assert generate(TOK, PROMPT, 20, seed=1) == a
    assert generate(TOK, PROMPT, 20, seed=None) == generate(TOK, PROMPT, 20, seed=None)
    assert generate(TOK, PROMPT, 20, seed=None).text not in (a.text, b.text)
    assert len(a.token_ids) == 20 and a.finish_reason == "length"


def test_eos_ends_a_sequence_unless_ignored():
    eos = eos_token_id(TOK)
    for seed in (None, 0, 1, 2, 3):
        n = natural_length(PROMPT, seed, (5, 9))
        assert 5 <= n <= 9
        free = generate(TOK, PROMPT, 50, seed, eos_after=(5, 9))
        full = generate(TOK, PROMPT, 50, seed)  # ignore_eos
        assert len(free.token_ids) == n and free.token_ids[-1] == eos
        assert free.finish_reason == "stop" and free.matched_stop == eos
        assert free.pieces[-1] == "" and free.token_ids[:-1] == full.token_ids[: n - 1]
        assert full.text.startswith(free.text) and len(full.token_ids) == 50
        short = generate(TOK, PROMPT, n - 1, seed, eos_after=(5, 9))  # the budget ends it first
        assert short.finish_reason == "length" and eos not in short.token_ids
    assert len({natural_length(PROMPT, s, (1, 1000)) for s in range(10)}) > 1
    with pytest.raises(ValueError):
        natural_length(PROMPT, 0, (5, 4))


def test_stop_string_is_excluded_and_reported():
    full = generate(TOK, PROMPT, 30, seed=0)
    word = full.pieces[12]
    cut = generate(TOK, PROMPT, 30, seed=0, stop=[word])
    assert cut.finish_reason == "stop" and cut.matched_stop == word
    assert word not in cut.text and full.text.startswith(cut.text)
    kept = generate(TOK, PROMPT, 30, seed=0, stop=[word], no_stop_trim=True)
    assert kept.text.endswith(word)


def test_logprobs_are_deterministic_normalised_and_greedy_consistent():
    gen = generate(TOK, PROMPT, 12, seed=0)
    lps = token_logprobs(TOK, gen.token_ids, 3)
    assert lps == token_logprobs(TOK, gen.token_ids, 3)
    assert [lp.token_id for lp in lps] == gen.token_ids
    for lp in lps:
        assert len(lp.top) == 3 and lp.top[0][0] == lp.token_id and lp.logprob < 0
        probs = [math.exp(p) for _, _, p in lp.top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1
        assert len({t for t, _, _ in lp.top}) == 3
    assert all(lp.top == () for lp in token_logprobs(TOK, gen.token_ids, 0))
