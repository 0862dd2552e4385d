"""Run every workload on every system against the same engines, in one invocation.

For each workload (and each arrival rate of a ``--rate`` list): measure the DAG
critical-path bound on an idle engine, then run the workload once per system,
flushing the engines' prefix caches before each system so none inherits
another's warm cache. Apps start as planned by the workload's arrival times
(engine seconds x time-scale); all results are kept raw. ``--sweep`` (see
``saturation``) measures capacity, a latency-vs-load curve and goodput instead.

Every run also records the harness's own lag and the CPU use of the harness and
of every service process; a run that lagged or was CPU-bound is marked not
comparable in the summary and the table.
"""

from __future__ import annotations

import json
from typing import Any

from .bench import DEFAULT_LOADS, Bench, BenchConfig, open_loop, run_line
from .bound import BOUND_METHOD
from .metrics import workload_summary
from .saturation import measure_capacity, run_sweep
from .services import Services
from .workloads import build_workload

__all__ = ["DEFAULT_LOADS", "BenchConfig", "run_benchmark"]


def _default_apps(cfg: BenchConfig, name: str, rate: float | None) -> int | None:
    if cfg.apps is not None or rate is None or name in ("shared-prompt", "mixed", "mixed-heavy"):
        return cfg.apps
    return 6 if cfg.size == "small" else 20


async def run_rates(b: Bench, name: str) -> dict[str, Any]:
    """Each workload once per system at each ``--rate`` (or at ``--load`` x the
    baseline's capacity, measured first; ``mixed-heavy`` defaults to 0.9)."""
    cfg = b.cfg
    rates = list(cfg.rates)
    extra: dict[str, Any] = {}
    if rates == [None] and (cfg.load is not None or name == "mixed-heavy"):
        load = cfg.load if cfg.load is not None else 0.9
        cap = await measure_capacity(b, name, [b.reference()])
        base = cap["capacity_apps_per_s"][b.reference()]
        rates = [round(load * base, 4)]
        extra = {"offered_load": load, **cap}
    entries: list[dict[str, Any]] = []
    for rate in rates:
        wl = build_workload(name, cfg.size, cfg.seed, _default_apps(cfg, name, rate), rate)
        key = f"{name}@{rate:.4g}" if rate is not None else name
        b.log(f"[{key}] {len(wl.apps)} apps, {wl.requests} requests; measuring the bound ...")
        bound = await b.bound(wl)
        per_system: dict[str, Any] = {}
        raw: dict[str, Any] = {"workload": name, "rate": rate, "params": wl.params, "bound": bound,
                               "engines": b.svc.long_label, "systems": {}}
        for sname in b.systems:
            run = await b.run(sname, open_loop(wl, cfg.time_scale), key, len(wl.arrivals))
            m = b.metrics(run, name, f"rate {rate:.3g}/s" if rate is not None else "one run")
            per_system[sname] = m
            raw["systems"][sname] = [r.to_json() for r in run.results]
            b.log(run_line(key, sname, m))
        entry = workload_summary(per_system, bound["bound_s"])
        entry["bound_model_s"] = round(bound["bound_model_s"], 4) if "bound_model_s" in bound else None
        entry["bound_by_kind"] = {k: round(v, 4) for k, v in bound["by_kind"].items()}
        entry["params"] = dict(wl.params)
        entry["rate"] = rate
        entries.append(entry)
        b.write_raw(key, raw)
    out = dict(entries[0])
    if len(entries) > 1:
        out["sweep"] = [{"rate": e["rate"], "systems": e["systems"], "speedup": e["speedup"]}
                        for e in entries]
    out.update(extra)
    out["not_comparable"] = b.not_comparable(name)
    return out


async def run_benchmark(cfg: BenchConfig, svc: Services, log: Any = print) -> dict[str, Any]:
    """Run the configured workloads x systems (x rates, or the saturation sweep); write
    the raw JSON and ``summary.json``; return the summary."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "raw").mkdir(exist_ok=True)
    b = Bench(cfg, svc, log)
    summary: dict[str, Any] = {
        "engines": svc.label,
        "engine_label": svc.long_label,
        "simulated": svc.simulated,
        "time_scale": cfg.time_scale,
        "time_unit": ("engine seconds: wall seconds / time-scale (what engines at time-scale 1 "
                      "would take); *_wall_s keys are raw wall seconds"),
        "client_rtt_ms": cfg.client_rtt_ms,
        "client_rtt_note": (f"{cfg.client_rtt_ms:g} ms engine-time round trip = "
                            f"{cfg.client_rtt_ms * cfg.time_scale:g} ms wall, half before and "
                            "half after every client-to-service call, every system"),
        "size": cfg.size,
        "seed": cfg.seed,
        "systems_run": b.systems,
        "notes": [n for n in [svc.router_note, svc.replicas_note] if n],
        "bound_method": BOUND_METHOD,
        "harness": harness_note(cfg),
        "workloads": {},
    }
    if cfg.time_scale != 1.0:
        summary["notes"].append(
            f"time-scale {cfg.time_scale:g}: engines run {1 / cfg.time_scale:g}x faster than a GPU, so every "
            "ms of gateway, router and harness CPU weighs that much more: a CI-sized run, not for comparison")
    if cfg.quick:
        summary["notes"].append("--quick: few apps per point and no capacity search: a smoke test, "
                                "not steady state")
    for name in cfg.workloads:
        if cfg.sweep:
            summary["workloads"][name] = await run_sweep(b, name)
        else:
            summary["workloads"][name] = await run_rates(b, name)
    merged: dict[str, list[str]] = {}
    for name in summary["workloads"]:
        for s, why in b.not_comparable(name).items():
            merged.setdefault(s, []).append(f"{name}: {why}")
    summary["not_comparable"] = {s: " | ".join(v) for s, v in merged.items()}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def harness_note(cfg: BenchConfig) -> dict[str, Any]:
    th = cfg.thresholds
    return {
        "client": (f"one process, uvloop, HTTP client {cfg.http_client} (keep-alive pool), apps built "
                   "before each run, cyclic GC off during runs"),
        "pinning": cfg.affinity.to_json() if cfg.affinity else None,
        "max_lag_ms": th.max_lag_ms,
        "max_cpu_share": th.max_cpu,
        "lag": ("app start: actual - planned start; step send: request written - inputs ready on the client "
                "- rtt/2 (gateway DAG: submit written - the later of the app's start and its inputs' finish "
                "on the server - rtt/2); p99 over the apps whose latency is reported, engine ms"),
        "cpu": "psutil CPU time / wall time per process over each run, in cores (1.0 = one core busy)",
    }
