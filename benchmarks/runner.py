"""Run every workload on every system against the same engines, in one invocation.

For each workload (and each arrival rate of a sweep): measure the DAG
critical-path bound on an idle engine, then run the workload once per
system, flushing the engines' prefix caches before each system so none
inherits another's warm cache. Apps start as planned by the workload's
arrival times (engine seconds x time-scale); all results are kept raw.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .metrics import system_metrics, workload_summary
from .services import Services
from .systems import AppResult, System, make_system
from .workloads import App, Workload, build_workload, critical_path, topo_order

BOUND_METHOD = (
    "measured: each step of one instance per app shape run alone, in dependency order, "
    "on an idle engine whose cache was flushed before every step (no client delay); "
    "bound = longest path of those times (wall / time-scale). bound_model_s: the same "
    "from the simulator's cost model (prefill + batch-1 decode), where the engines are simulated."
)


@dataclass
class BenchConfig:
    workloads: list[str]
    systems: list[str]
    out: Path
    engines: int = 2
    time_scale: float = 1.0
    backends: list[str] = field(default_factory=list)
    size: str = "small"
    apps: int | None = None
    rates: list[float | None] = field(default_factory=lambda: [None])
    client_rtt_ms: float = 0.0
    seed: int = 0
    profile: str = "h100-llama3-8b"
    progress: bool = True


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(900.0, connect=10.0),
        limits=httpx.Limits(max_connections=4096, max_keepalive_connections=512),
    )


def model_request_s(profile_name: str, prompt_tokens: int, output_tokens: int) -> float | None:
    """Unloaded single-request time from the simulator's cost model (engine seconds)."""
    try:
        from backends.sim.cost_model import prefill_pairs, step_time
        from backends.sim.profiles import get_profile

        p = get_profile(profile_name)
    except (ImportError, ValueError):
        return None
    total, done = 0.0, 0
    while done < prompt_tokens:
        n = min(p.chunked_prefill_size, prompt_tokens - done)
        total += step_time(p, n, prefill_pairs(0, done, n), 0, 0)
        done += n
    for i in range(1, max(0, output_tokens - 1) + 1):  # the first token comes with the prefill
        total += step_time(p, 0, 0, 1, prompt_tokens + i)
    return total


async def measure_bound(svc: Services, wl: Workload, model: str, time_scale: float,
                        cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Critical-path bound per app shape (measured once per shape, kept in ``cache``
    across the rates of a sweep), then the mean over the workload's apps."""
    shapes: dict[str, App] = {}
    for a in wl.apps:
        shapes.setdefault(a.shape, a)
    per_shape: dict[str, Any] = cache if cache is not None else {}
    engine = svc.engines[0]
    async with _client() as client:
        for shape, app in shapes.items():
            if shape in per_shape:
                continue
            values: dict[str, str] = {}
            cost: dict[str, float] = {}
            model_cost: dict[str, float] = {}
            for step in topo_order(app.steps):
                await svc.flush(client)
                body = {"model": model, "messages": step.messages(values), "max_tokens": step.max_tokens,
                        "temperature": 0.0, "ignore_eos": True}
                t0 = time.perf_counter()
                r = await client.post(engine + "/v1/chat/completions", json=body)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                data = r.json()
                values[step.name] = data["choices"][0]["message"]["content"] or ""
                cost[step.name] = dt / time_scale
                if svc.simulated:
                    usage = data.get("usage") or {}
                    m = model_request_s(svc.profile, int(usage.get("prompt_tokens") or 0), step.max_tokens)
                    if m is not None:
                        model_cost[step.name] = m
            bound, path = critical_path(app, cost)
            entry: dict[str, Any] = {"bound_s": bound, "path": path, "step_s": cost}
            if len(model_cost) == len(cost):
                entry["bound_model_s"] = critical_path(app, model_cost)[0]
            per_shape[shape] = entry
    n = len(wl.apps)
    mean = sum(per_shape[a.shape]["bound_s"] for a in wl.apps) / n
    used = {k: per_shape[k] for k in shapes}
    out: dict[str, Any] = {"bound_s": mean, "shapes": used, "method": BOUND_METHOD}
    if all("bound_model_s" in e for e in used.values()):
        out["bound_model_s"] = sum(per_shape[a.shape]["bound_model_s"] for a in wl.apps) / n
    return out


async def run_workload(
    system: System, wl: Workload, time_scale: float, progress: Any = None
) -> list[AppResult]:
    """Start each app at its arrival time (scaled to wall) and wait for all of them."""
    t0 = time.time() + 0.02

    async def one(at_s: float, app: App) -> AppResult:
        when = t0 + at_s * time_scale
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        res = await system.run_app(app, scheduled=when)  # type: ignore[call-arg]
        if progress is not None:
            progress.update(1)
        return res

    return list(await asyncio.gather(*(one(a.at_s, a.app) for a in wl.arrivals)))


async def _warm_up(system: System, svc: Services) -> None:
    from .workloads import Step

    app = App("warmup", f"warmup-{system.name}", (Step("w", "Say hello.", 2),), ("w",))
    await system.run_app(app)  # type: ignore[call-arg]


def _default_apps(cfg: BenchConfig, name: str, rate: float | None) -> int | None:
    if cfg.apps is not None or rate is None or name in ("shared-prompt", "mixed"):
        return cfg.apps
    return 6 if cfg.size == "small" else 20


async def run_benchmark(cfg: BenchConfig, svc: Services, log: Any = print) -> dict[str, Any]:
    """Run the configured workloads x systems x rates; write raw JSON; return the summary."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "raw").mkdir(exist_ok=True)
    # network delay in engine time, scaled like the engines
    rtt_s = cfg.client_rtt_ms / 1000.0 * cfg.time_scale
    systems = [s for s in cfg.systems if s != "sglang-router" or svc.router]
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
        "systems_run": systems,
        "notes": [n for n in [svc.router_note] if n],
        "bound_method": BOUND_METHOD,
        "workloads": {},
    }
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None  # type: ignore[assignment]

    bound_cache: dict[str, Any] = {}
    for name in cfg.workloads:
        entries: dict[str, Any] = {}
        for rate in cfg.rates:
            wl = build_workload(name, cfg.size, cfg.seed, _default_apps(cfg, name, rate), rate)
            key = f"{name}@{rate:g}" if rate is not None else name
            log(f"[{key}] {len(wl.apps)} apps, {wl.requests} requests; measuring the bound ...")
            bound = await measure_bound(svc, wl, svc.model, cfg.time_scale, bound_cache)
            per_system: dict[str, Any] = {}
            raw: dict[str, Any] = {"workload": name, "rate": rate, "params": wl.params, "bound": bound,
                                   "engines": svc.long_label, "systems": {}}
            for sname in systems:
                async with _client() as client:
                    system = make_system(sname, client, engines=svc.engines, gateway=svc.gateway,
                                         router=svc.router, model=svc.model, rtt_s=rtt_s)
                    await _warm_up(system, svc)
                    await svc.flush(client)
                    busy0 = await svc.busy_seconds(client)
                    bar = (tqdm(total=len(wl.arrivals), desc=f"{key} {sname}", leave=False, disable=None)
                           if tqdm and cfg.progress else None)
                    t0 = time.time()
                    results = await run_workload(system, wl, cfg.time_scale, bar)
                    wall = time.time() - t0
                    if bar is not None:
                        bar.close()
                    busy1 = await svc.busy_seconds(client)
                m = system_metrics(results, cfg.time_scale)
                m["wall_s"] = round(wall, 4)
                if busy0 is not None and busy1 is not None:
                    m["engine_busy_s"] = round(busy1 - busy0, 4)
                    span = m.get("makespan_s") or 0
                    if span:
                        m["engine_utilization"] = round((busy1 - busy0) / (span * len(svc.engines)), 4)
                per_system[sname] = m
                raw["systems"][sname] = [r.to_json() for r in results]
                log(f"[{key}] {sname}: e2e mean {m['e2e_mean_s']} s (engine time), "
                    f"p99 {m['e2e_p99_s']} s, failed {m['failed']}")
            entry = workload_summary(per_system, bound["bound_s"])
            entry["bound_model_s"] = round(bound["bound_model_s"], 4) if "bound_model_s" in bound else None
            entry["params"] = {k: v for k, v in wl.params.items()}
            entry["rate"] = rate
            entries[key] = entry
            (cfg.out / "raw" / f"{key}.json").write_text(json.dumps(raw, indent=1, default=str))
        first = next(iter(entries.values()))
        summary["workloads"][name] = dict(first)
        if len(entries) > 1:
            summary["workloads"][name]["sweep"] = {
                str(v["rate"]): {"systems": v["systems"], "speedup": v["speedup"]} for v in entries.values()
            }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
