"""Benchmarks: pure workload/metric logic, and one short real run of `bench`
(simulated engines, a real redis-server and gateway subprocess) whose
outputs are checked for the SPEC section 8 shape."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from benchmarks.metrics import percentile, workload_summary
from benchmarks.systems import chat_body
from benchmarks.workloads import (
    WORKLOADS,
    App,
    Step,
    build_workload,
    count_tokens,
    critical_path,
    poisson_times,
    synthetic_text,
    topo_order,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ pure


def test_synthetic_text_is_deterministic_and_sized() -> None:
    a = synthetic_text(300, 7)
    assert a == synthetic_text(300, 7)
    assert a != synthetic_text(300, 8)
    assert "{{" not in a and "\\" not in a
    for n in (1, 12, 13, 300, 1000, 4000):
        assert abs(count_tokens(synthetic_text(n, n)) - n) <= 1, n


def test_every_word_is_one_token_and_a_period_one_more() -> None:
    """What lets synthetic_text size its text without tokenizing it."""
    from analysis.tokenizer import get_tokenizer
    from benchmarks.workloads import _WORDS

    tok = get_tokenizer()
    assert all(len(tok.encode(" " + w)) == 1 and len(tok.encode(" " + w + ".")) == 2 for w in _WORDS)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workloads_are_valid_dags(name: str) -> None:
    wl = build_workload(name, "small", seed=1)
    assert wl.arrivals and all(a.at_s >= 0 for a in wl.arrivals)
    for app in wl.apps:
        names = {s.name for s in app.steps}
        order = topo_order(app.steps)
        assert [s.name for s in order if s.name in names] and len(order) == len(app.steps)
        for s in app.steps:
            assert set(s.inputs) <= names, (s.name, s.inputs)
            assert s.max_tokens > 0
        assert set(app.finals) <= names
    # deterministic
    again = build_workload(name, "small", seed=1)
    assert [a.app.steps for a in again.arrivals] == [a.app.steps for a in wl.arrivals]


def test_full_sizes_follow_the_paper_shapes() -> None:
    chain = build_workload("chain", "full").apps[0]
    assert len(chain.steps) == 20 and chain.steps[-1].inputs == ("s18",)
    mr = build_workload("map-reduce", "full").apps[0]
    assert len(mr.steps) == 17 and len(mr.step("reduce").inputs) == 16
    assert 990 <= count_tokens(mr.steps[0].user) <= 1040
    sp = build_workload("shared-prompt", "full")
    assert len(sp.apps) == 500 and {a.shape for a in sp.apps} == {f"gpts{i}:1.0" for i in range(4)}
    ma = build_workload("multi-agent", "full").apps[0]
    assert len(ma.steps) == 1 + 9 * 8
    mixed = build_workload("mixed", "full")
    assert sum(a.kind == "chat" for a in mixed.apps) == 40
    assert sum(a.kind == "map-reduce" for a in mixed.apps) == 9


def test_multi_agent_rounds_feed_forward() -> None:
    app = build_workload("multi-agent", "small").apps[0]
    review = app.step("rv0_r2")
    assert "design" in review.inputs and {f"f{i}_r1" for i in range(4)} <= set(review.inputs)
    revise = app.step("f0_r3")
    assert "rv0_r2" in revise.inputs
    assert app.finals == tuple(f"f{i}_r3" for i in range(4))


def test_rate_makes_poisson_arrivals() -> None:
    wl = build_workload("map-reduce", "small", apps=50, rate=5.0)
    times = [a.at_s for a in wl.arrivals]
    assert times == sorted(times) and times[0] == 0
    assert 5.0 < times[-1] < 20.0  # 49 gaps of mean 0.2 s
    ts = poisson_times(2000, 4.0, random.Random(0))
    assert abs((len(ts) - 1) / ts[-1] - 4.0) < 0.4


def test_critical_path_picks_the_longest_chain() -> None:
    steps = (Step("a", "x", 1), Step("b", "{{a}}", 1), Step("c", "y", 1), Step("d", "{{b}} {{c}}", 1))
    app = App("t", "t0", steps, ("d",))
    total, path = critical_path(app, {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0})
    assert total == 6.0 and path == ["c", "d"]


def test_every_request_forces_exact_length() -> None:
    body = chat_body(Step("s", "{{x}} please", 42), "m", "t", {"x": "hi"})
    assert body["ignore_eos"] is True and body["max_tokens"] == 42
    assert body["messages"][-1]["content"] == "hi please"
    assert chat_body(Step("s", "{{x}}", 1), "m", "t", None)["messages"][-1]["content"] == "{{x}}"


def test_metrics() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert math.isnan(percentile([], 99))
    w = workload_summary({"baseline": {"e2e_mean_s": 4.0}, "gateway": {"e2e_mean_s": 2.0}}, 1.0)
    assert w["speedup"] == 2.0 and w["gateway_vs_bound"] == 2.0 and w["vs_bound"]["baseline"] == 4.0


# ------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One app per workload with the paper's 250 ms client delay, at time-scale 0.25 so the
    gateway's real (unscaled) per-request CPU cost is not magnified 20-50x as at 0.02-0.05."""
    from benchmarks.cli import main

    out = tmp_path_factory.mktemp("bench")
    rc = main([
        "map-reduce", "chain", "--size", "small", "--time-scale", "0.25", "--engines", "2",
        "--systems", "baseline,gateway-plain,gateway", "--client-rtt-ms", "250",
        "--out", str(out), "--no-progress",
    ])
    assert rc == 0
    return out


@pytest.mark.timeout(180)
def test_summary_has_the_spec_shape(bench_run: Path) -> None:
    s = json.loads((bench_run / "summary.json").read_text())
    assert s["engines"] == "simulated:h100-llama3-8b"
    assert "time-scale 0.25" in s["engine_label"]
    assert set(s["workloads"]) == {"map-reduce", "chain"}
    for name, w in s["workloads"].items():
        assert set(w["systems"]) == {"baseline", "gateway-plain", "gateway"}
        for m in w["systems"].values():
            for key in ("e2e_mean_s", "e2e_p99_s", "throughput_rps"):
                assert isinstance(m[key], float) and m[key] > 0, (name, key)
            assert m["failed"] == 0, m["errors"]
        assert w["speedup"] == pytest.approx(
            w["systems"]["baseline"]["e2e_mean_s"] / w["systems"]["gateway"]["e2e_mean_s"], rel=1e-2)
        assert w["bound_s"] > 0 and w["gateway_vs_bound"] > 0
    raw = json.loads((bench_run / "raw" / "map-reduce.json").read_text())
    reqs = raw["systems"]["gateway"][0]["requests"]
    assert len(reqs) == 9 and all(r["engine"] for r in reqs)


@pytest.mark.timeout(180)
def test_charts_are_pngs(bench_run: Path) -> None:
    for name in ("speedup.png", "timeline_map-reduce.png"):
        data = (bench_run / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000


@pytest.mark.timeout(180)
def test_gateway_not_slower_than_baseline(bench_run: Path) -> None:
    s = json.loads((bench_run / "summary.json").read_text())
    for name in ("map-reduce", "chain"):
        base = s["workloads"][name]["systems"]["baseline"]["e2e_mean_s"]
        gw = s["workloads"][name]["systems"]["gateway"]["e2e_mean_s"]
        print(name, "baseline", base, "gateway", gw)
        assert gw <= 1.1 * base, (name, gw, base)
    # A 6-step chain pays the client round trip once, not per step.
    assert s["workloads"]["chain"]["speedup"] > 1.2


@pytest.mark.timeout(240)
def test_peers_in_the_same_run(tmp_path: Path) -> None:
    """The tiny comparison CI runs: SGLang Model Gateway (smg, cache_aware) beside the
    gateway on the same simulated engines, caches flushed between systems."""
    import shutil

    from benchmarks.cli import main

    if shutil.which("smg") is None:
        pytest.skip("smg (the sglang-router package) is not installed")
    rc = main(["shared-prompt", "--size", "small", "--time-scale", "0.25", "--apps", "6",
               "--systems", "baseline,sglang-router,gateway-plain", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    w = json.loads((tmp_path / "summary.json").read_text())["workloads"]["shared-prompt"]
    assert set(w["systems"]) == {"baseline", "sglang-router", "gateway-plain"}
    for name, m in w["systems"].items():
        assert m["failed"] == 0, (name, m["errors"])
        assert 0.0 < m["cached_token_ratio"] <= 1.0, name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_all_workloads_small(tmp_path: Path) -> None:
    from benchmarks.cli import main

    rc = main(["all", "--size", "small", "--time-scale", "0.1", "--systems", "baseline,gateway",
               "--out", str(tmp_path), "--no-progress", "--requests", "100"])
    assert rc == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert set(s["workloads"]) == set(WORKLOADS)
    assert "overhead" in s and (tmp_path / "overhead.png").exists()
