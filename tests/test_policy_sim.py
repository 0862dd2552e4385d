"""The policy in virtual time (benchmarks.policy_sim): whole applications on the pure
engine model, against a model of SGLang Model Gateway's cache-aware routing with FIFO
engines. Deterministic (no wall clock), so these are checks of the policy's design at
load, not of speed; published figures come from `parrot-gateway bench`."""

from __future__ import annotations

import random

import pytest

from benchmarks.policy_sim import SimConfig, Simulation, run_systems
from benchmarks.workloads import Arrival, Workload, build_workload, chat_app, map_reduce_app, poisson_times

pytestmark = pytest.mark.timeout(120)


def test_chat_is_not_queued_behind_a_throughput_batch() -> None:
    rng = random.Random(3)
    arr = [Arrival(t, map_reduce_app(f"b{i}", 0, 16, 1000, 50, tenant="batch", criteria="throughput"))
           for i, t in enumerate(poisson_times(16, 2.6, rng))]
    arr += [Arrival(t, chat_app(f"chat-{i}", 0, 200, 120)) for i, t in enumerate(poisson_times(6, 1.0, rng))]
    wl = Workload("mixed-heavy", "small", sorted(arr, key=lambda a: a.at_s))
    res = run_systems(wl, ("smg", "gateway"))
    smg, gw = res["smg"]["chat"], res["gateway"]["chat"]
    assert gw["ttft_p50_s"] * 2 < smg["ttft_p50_s"], (gw, smg)
    assert gw["ttft_p99_s"] * 2 < smg["ttft_p99_s"], (gw, smg)


def test_shared_prefixes_stay_cached_at_least_as_well_as_the_router() -> None:
    wl = build_workload("multi-agent", "small", 0, 12, 6)
    res = run_systems(wl, ("smg", "gateway"))
    assert res["gateway"]["cached_ratio"] >= res["smg"]["cached_ratio"]
    assert res["gateway"]["e2e_mean_s"] <= res["smg"]["e2e_mean_s"] * 1.02


def test_every_app_finishes_and_the_engines_are_never_idle_with_work_queued() -> None:
    wl = build_workload("map-reduce", "small", 0, 10, 8)
    run = Simulation("gateway", wl, SimConfig()).run()
    assert len(run.apps) == 10 and all(a.latency > 0 for a in run.apps)
    assert all(r.done >= r.first >= r.sent for r in run.requests)
    assert run.summary()["utilization"] > 0.5
