"""`bench --variant`: a gateway with settings changed, measured beside the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.metrics import proxy_roles
from benchmarks.variants import PLAIN_VARIANTS, VARIANTS, parse_variant


def test_a_variant_names_settings_by_field_or_variable() -> None:
    v = parse_variant("gateway-budget2:prefill_budget_chunks=2, PARROT_MAX_INFLIGHT_PER_ENGINE=64")
    assert v.name == "gateway-budget2" and not v.plain
    assert v.env == {"PARROT_PREFILL_BUDGET_CHUNKS": "2", "PARROT_MAX_INFLIGHT_PER_ENGINE": "64"}
    assert parse_variant("gateway-plain-rr:scheduler_policy=round_robin").plain


@pytest.mark.parametrize("text, says", [
    ("budget2:prefill_budget_chunks=2", "gateway-"),
    ("gateway-x y:prefill_budget_chunks=2", "gateway-"),
    ("gateway-b:prefill_budget_chunks", "SETTING=VALUE"),
    ("gateway-b:no_such_setting=1", "no_such_setting"),
    ("gateway-b:", "no setting changed"),
    ("gateway-plain:infer_programs=false", "already a system"),
    ("gateway-x-2r:infer_programs=false", "kept for one"),
])
def test_a_bad_variant_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_variant(text, taken=("gateway", "gateway-plain"))


def test_a_variant_is_its_own_proxy_process() -> None:
    assert proxy_roles("gateway-budget2") == ("gateway-budget2",)
    assert proxy_roles("gateway-plain") == ("gateway",)
    assert proxy_roles("baseline") == ()


@pytest.mark.timeout(240)
def test_the_cli_runs_a_variant_beside_the_gateway(tmp_path: Path) -> None:
    from benchmarks.cli import main

    before = (dict(VARIANTS), dict(PLAIN_VARIANTS))
    try:
        rc = main(["shared-prompt", "--size", "small", "--time-scale", "0.25", "--apps", "4",
                   "--systems", "gateway-plain", "--variant", "gateway-plain-rr:scheduler_policy=round_robin",
                   "--out", str(tmp_path), "--no-progress"])
        assert PLAIN_VARIANTS["gateway-plain-rr"] == {"PARROT_SCHEDULER_POLICY": "round_robin"}
    finally:
        VARIANTS.clear(), VARIANTS.update(before[0])
        PLAIN_VARIANTS.clear(), PLAIN_VARIANTS.update(before[1])
    assert rc == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    w = s["workloads"]["shared-prompt"]["systems"]
    assert set(w) == {"gateway-plain", "gateway-plain-rr"}
    assert all(m["failed"] == 0 for m in w.values())
    assert "gateway-plain-rr" in w["gateway-plain-rr"]["cpu"]  # measured as its own process
    assert main(["chain", "--variant", "gateway-x:nope=1", "--out", str(tmp_path)]) == 2
