"""The calibration fit recovers a known profile from a table the cost model made,
and the measuring tool runs end to end on a tiny CPU model where torch is installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

from backends.sim import calibrate
from backends.sim.calibrate import ModelShape, Point, fit_profile, profile_snippet
from backends.sim.cost_model import step_time
from backends.sim.profiles import H100_LLAMA3_8B, CostProfile

FITTED = (
    "mem_bandwidth",
    "mfu",
    "attn_efficiency",
    "kv_bytes_per_token",
    "step_overhead_s",
    "per_seq_overhead_s",
)


def table(profile: CostProfile, noise: float = 0.0, seed: int = 0) -> list[Point]:
    """The tool's default grid, timed by the cost model (times (1 + N(0, noise)))."""
    rng = np.random.default_rng(seed)
    grid = [Point("prefill", tokens=n, batch=1) for n in (256, 1024, 4096, 8192)]
    grid += [
        Point("decode", batch=b, context=c)
        for b in (1, 8, 32, 64, 128, 200)
        for c in (512, 2048, 8192)
    ]
    return [
        dataclasses.replace(
            p, seconds=step_time(profile, *p.cost_inputs()) * (1 + noise * rng.standard_normal())
        )
        for p in grid
    ]


def test_recovers_the_h100_profile_exactly():
    fit = fit_profile(
        table(H100_LLAMA3_8B), ModelShape.of(H100_LLAMA3_8B), H100_LLAMA3_8B, "h100-llama3-8b"
    )
    for name in FITTED:
        assert getattr(fit.profile, name) == pytest.approx(
            getattr(H100_LLAMA3_8B, name), rel=1e-3
        ), name
    assert (
        dataclasses.replace(fit.profile, **{n: getattr(H100_LLAMA3_8B, n) for n in FITTED})
        == H100_LLAMA3_8B
    )
    assert fit.crossover_tokens == pytest.approx(164, rel=0.01)  # (W/BW) / (F/(peak*mfu))
    assert fit.max_abs_rel_error < 1e-6 and not fit.warnings
    assert len(fit.points) == 4 + 18 and all(abs(p["rel_error"]) < 1e-6 for p in fit.points)


def test_recovers_an_eager_like_profile_from_noisy_timings():
    slow = dataclasses.replace(
        H100_LLAMA3_8B,
        mem_bandwidth=2.2e12,
        mfu=0.3,
        attn_efficiency=0.15,
        kv_bytes_per_token=3 * 131072,
        step_overhead_s=12e-3,
        per_seq_overhead_s=40e-6,
    )
    for seed in range(5):
        # 1% timing noise moves the split between correlated terms (overhead vs
        # weight streaming vs KV) by up to ~20%; the predicted step times stay within ~1%.
        fit = fit_profile(table(slow, noise=0.01, seed=seed), ModelShape.of(slow), slow)
        for name in FITTED:
            assert getattr(fit.profile, name) == pytest.approx(getattr(slow, name), rel=0.25), (
                seed,
                name,
            )
        assert fit.rms_rel_error < 0.015
        assert fit.profile.mfu == pytest.approx(0.3, rel=0.1)


def test_snippet_round_trips_and_too_few_points_is_an_error():
    ns: dict = {"CostProfile": CostProfile}
    exec(profile_snippet(H100_LLAMA3_8B, "comment\nlines"), ns)  # noqa: S102 (our own output)
    got = ns["H100_LLAMA3_8B"]
    for f in dataclasses.fields(CostProfile):
        want = getattr(H100_LLAMA3_8B, f.name)
        assert getattr(got, f.name) == (
            pytest.approx(want, rel=1e-4) if isinstance(want, float) else want
        )
    with pytest.raises(ValueError, match="at least 5"):
        fit_profile(table(H100_LLAMA3_8B)[:4], ModelShape.of(H100_LLAMA3_8B))


def test_refit_of_a_saved_table_needs_no_torch(tmp_path, capsys):
    rows = [{**dataclasses.asdict(p), "samples": [p.seconds]} for p in table(H100_LLAMA3_8B)]
    src = tmp_path / "in.json"
    src.write_text(
        json.dumps(
            {
                "model": {"shape": dataclasses.asdict(ModelShape.of(H100_LLAMA3_8B))},
                "measured": rows,
                "skipped": [],
                "fit": {"profile": {"name": "h100-refit"}},
            }
        )
    )
    out = tmp_path / "out.json"
    assert (
        calibrate.main(
            [
                "--refit",
                str(src),
                "--out",
                str(out),
                "--graph-overhead-s",
                "1e-4",
                "--kv-copy-factor",
                "2",
                "--print-profile",
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["fit"]["raw_profile"]["step_overhead_s"] == pytest.approx(3e-4, rel=1e-3)
    assert doc["fit"]["profile"]["step_overhead_s"] == 1e-4
    assert doc["fit"]["profile"]["kv_bytes_per_token"] == pytest.approx(65536, rel=1e-3)
    assert "H100_REFIT = CostProfile(" in capsys.readouterr().out


HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


@pytest.mark.skipif(
    not HAVE_TORCH, reason="torch and transformers are not installed (not project dependencies)"
)
def test_tiny_model_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "calib.json"
    argv = [
        "--out",
        str(out),
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--batches",
        "1,4,16",
        "--contexts",
        "16,128",
        "--prefill",
        "16,64,256",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--print-profile",
    ]
    assert calibrate.main(argv) == 0
    doc = json.loads(out.read_text())
    prov = doc["provenance"]
    assert (
        prov["device"] == "cpu"
        and prov["dtype"] == "float32"
        and prov["torch"]
        and prov["transformers"]
    )
    assert "--config tiny" in prov["command"] and "upper bound" in doc["notes"][0]
    assert [(r["kind"], r["tokens"], r["batch"], r["context"]) for r in doc["measured"]] == [
        ("prefill", 16, 1, 0),
        ("prefill", 64, 1, 0),
        ("prefill", 256, 1, 0),
        *[("decode", 0, b, c) for b in (1, 4, 16) for c in (16, 128)],
    ] and doc["skipped"] == []
    assert all(r["seconds"] > 0 and len(r["samples"]) == 3 for r in doc["measured"])
    shape = doc["model"]["shape"]
    assert (
        shape["kv_bytes_per_token"] == 2 * 2 * 32 * 2 * 4
    )  # layers x kv heads x head dim x (K,V) x fp32
    assert shape["weight_bytes"] == doc["model"]["parameters"] * 4
    fit = doc["fit"]
    assert len(fit["points"]) == 9 and all(np.isfinite(p["rel_error"]) for p in fit["points"])
    assert fit["profile"]["name"] == "cpu-tiny-calibrated"
    assert "CPU_TINY_CALIBRATED = CostProfile(" in capsys.readouterr().out
