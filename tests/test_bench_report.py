"""The Markdown tables the README is built from: each run kind gets the table that shows
what it measured (pure functions over summary JSON)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import markdown_table, plain_markdown


def _system(mean: float, **extra: Any) -> dict[str, Any]:
    return {"e2e_mean_s": mean, "e2e_p50_s": mean * 0.9, "e2e_p99_s": mean * 3, "cached_token_ratio": 0.5,
            "engine_utilization": 0.9, "throughput_apps_per_s": 2.0, **extra}


def test_single_load_run_of_other_systems_gets_one_row_each() -> None:
    summary = {"workloads": {"map-reduce": {
        "offered_load": 0.95, "rate": 2.5, "capacity_apps_per_s": {"baseline": 2.63},
        "not_comparable": {"gateway-fifo": "harness lag 9 ms p99"},
        "systems": {"sglang-router": _system(4.0), "gateway": _system(2.0), "gateway-fifo": _system(3.0)}}}}
    table = markdown_table(summary)
    assert "0.95 x baseline's capacity, 2.50 apps/s" in table
    rows = [line for line in table.splitlines() if line.startswith("| gateway")]
    assert rows[0].startswith("| gateway | 2.000 | 1.800 | 6.000 | 0.50")
    assert rows[1].startswith("| gateway-fifo * | 3.000")
    assert "gateway-fifo: not comparable: harness lag 9 ms p99" in table


def test_mixed_run_reports_chat_ttft_and_batch_jct() -> None:
    chat = {"ttft_p50_s": 0.05, "ttft_p99_s": 0.4, "normalized_latency_p50_s_per_token": 0.012,
            "normalized_latency_p99_s_per_token": 0.03}
    batch = {"jct_mean_s": 9.5, "jct_p99_s": 20.0}
    summary = {"workloads": {"mixed-heavy": {"offered_load": 0.9, "systems": {
        "sglang-router": _system(5.0, by_kind={"chat": chat, "batch": batch})}}}}
    table = markdown_table(summary)
    assert "| sglang-router | 0.050 / 0.400 | 0.0120 / 0.0300 | 9.50 / 20.00 | 0.50 |" in table


def test_unstreamed_chats_are_not_a_mixed_run() -> None:
    """The agents workload has chats too, but not streamed: its headline is app latency."""
    kinds = {"chat": {"ttft_p50_s": None}, "batch": {"jct_mean_s": 1.0}}
    summary = {"workloads": {"agents": {"systems": {"gateway-plain-noinfer": _system(4.5, by_kind=kinds)}}}}
    assert "| gateway-plain-noinfer | 4.500 |" in markdown_table(summary)


def test_plain_table_one_row_per_run() -> None:
    result = {"runs": [{"concurrency": 8, "system": "baseline", "ttft_p50_ms": 40.0, "ttft_p95_ms": 90.0,
                        "itl_mean_ms": 7.5, "e2e_mean_ms": 1000.0, "throughput_rps": 7.9, "errors": 0}]}
    assert "| 8 | baseline | 40.0 / 90.0 | 7.50 | 1000 | 7.90 | 0 |" in plain_markdown(result)


def test_sweep_with_repeats_shows_each_runs_mean() -> None:
    point = {"rate": 2.0, "load": 0.95, "systems": {
        "gateway": _system(3.0, repeats=[{"e2e_mean_s": 2.5}, {"e2e_mean_s": 3.5}]),
        "sglang-router": _system(4.0, repeats=[{"e2e_mean_s": 4.2}, {"e2e_mean_s": 3.8}])}}
    summary = {"workloads": {"map-reduce": {
        "capacity_apps_per_s": {"sglang-router": 2.0, "gateway": 2.5}, "goodput_apps_per_s": {},
        "slo": "p90", "slo_s": {}, "sweep": [point]}}}
    table = markdown_table(summary)
    assert "2 runs per point, pooled" in table
    assert "| gateway | 2.50 | - | 3.00 / 9.00 (2.50, 3.50) |" in table
    assert "| sglang-router | 2.00 | - | 4.00 / 12.00 (4.20, 3.80) |" in table


def test_sweep_table_keeps_variants_after_the_known_systems() -> None:
    """A variant swept with the others (two replicas, a policy switched off) gets its row."""
    point = {"rate": 2.0, "load": 1.0, "systems": {
        s: _system(t) for s, t in (("gateway-2r", 3.1), ("gateway", 3.0), ("sglang-router", 4.0))}}
    summary = {"workloads": {"map-reduce": {
        "capacity_apps_per_s": {"gateway-2r": 2.2, "sglang-router": 2.0, "gateway": 2.1},
        "goodput_apps_per_s": {}, "slo": "p90", "slo_s": {}, "sweep": [point]}}}
    rows = [line.split(" |")[0] for line in markdown_table(summary).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| sglang-router", "| gateway", "| gateway-2r"]
