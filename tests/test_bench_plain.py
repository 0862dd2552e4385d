"""The plain closed-loop benchmark (`parrot-gateway bench plain`), CI-sized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.plain_load import run_plain


@pytest.mark.timeout(180)
def test_plain_closed_loop_reports_ttft_per_system(tmp_path: Path) -> None:
    res = run_plain(tmp_path, [2], requests=6, prompt_tokens=96, output_tokens=8, time_scale=0.2,
                    systems=("baseline", "gateway-plain"),
                    log=lambda m: None)
    by_system = {r["system"]: r for r in res["runs"]}
    assert {"baseline", "gateway-plain"} <= set(by_system)
    for r in by_system.values():
        assert r["requests"] == 6 and r["errors"] == 0
        assert 0 < r["ttft_p50_ms"] <= r["ttft_p95_ms"] <= r["e2e_p95_ms"]
        assert r["throughput_rps"] > 0 and r["itl_mean_ms"] > 0
    assert json.loads((tmp_path / "plain.json").read_text())["time_scale"] == 0.2
    assert (tmp_path / "plain_ttft.png").stat().st_size > 1000
