"""The h100-llama3-8b profile reproduces its published reference points (SPEC §6)."""

from __future__ import annotations

import pytest

from backends.sim.cost_model import prefill_pairs, step_time
from backends.sim.profiles import DEFAULT_PROFILE, PROFILES, get_profile

P = get_profile("h100-llama3-8b")


def test_default_profile_and_names():
    assert DEFAULT_PROFILE == "h100-llama3-8b"
    assert {"h100-llama3-8b", "instant"} <= set(PROFILES)
    with pytest.raises(ValueError, match="known"):
        get_profile("nope")


def test_decode_batch_1_is_5_to_7_ms():
    t = step_time(P, 0, 0, 1, 1000)
    assert 0.005 <= t <= 0.007
    # Within 20% of NVIDIA's published 4.6 ms ITL / the 4.8 ms bandwidth floor.
    assert t <= 4.8e-3 * 1.2


def test_decode_200_sequences_is_12_to_13_ms():
    t = step_time(P, 0, 0, 200, 200 * 512)
    assert 0.0115 <= t <= 0.0135


def test_prefill_is_tens_of_thousands_tokens_per_second():
    for n in (1000, 4000, 8000):
        t = step_time(P, n, prefill_pairs(0, 0, n), 0, 0)
        assert 15_000 <= n / t <= 60_000
    # 16 GFLOP per token of dense compute.
    assert P.linear_flops_per_token == pytest.approx(16e9, rel=0.01)


def test_costs_grow_with_work():
    assert step_time(P, 0, 0, 64, 64 * 4000) > step_time(P, 0, 0, 64, 64 * 100)
    assert step_time(P, 0, 0, 256, 0) > step_time(P, 0, 0, 8, 0)
    # Same new tokens attend to a long cached prefix: attention makes it dearer.
    assert step_time(P, 500, prefill_pairs(8000, 0, 500), 0, 0) > step_time(
        P, 500, prefill_pairs(0, 0, 500), 0, 0
    )
    assert step_time(P, 0, 0, 0, 0) == 0.0


def test_kv_capacity_about_400k_tokens():
    assert P.kv_bytes_per_token == 128 * 1024
    assert 330_000 <= P.kv_capacity_tokens <= 480_000


def test_instant_profile_is_near_zero():
    inst = get_profile("instant")
    assert step_time(inst, 8000, prefill_pairs(0, 0, 8000), 256, 10**6) < 1e-5
