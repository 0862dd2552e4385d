"""The critical-path bound of a workload: what one app takes with the engines to itself.

Each step of one instance per app shape runs alone, in dependency order, on an
idle engine whose cache was flushed before every step (no client delay); the
bound of a shape is the longest path of those times. Shapes are measured once
per benchmark and cached, so a sweep measures only the shapes it has not seen.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from .agents import run_script
from .services import Services
from .workloads import App, Workload, critical_path, topo_order

BOUND_METHOD = (
    "measured: each step of one instance per app shape run alone, in dependency order, "
    "on an idle engine whose cache was flushed before every step (no client delay); "
    "bound = longest path of those times (wall / time-scale). bound_model_s: the same "
    "from the simulator's cost model (prefill + batch-1 decode), where the engines are simulated."
)


def control_client() -> httpx.AsyncClient:
    """For control calls (flush, metrics, bound): not on the measured path."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(900.0, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
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


async def _measure_script(svc: Services, client: httpx.AsyncClient, app: App, model: str,
                          time_scale: float) -> dict[str, Any]:
    """A program of turns (``agents``): each turn alone on the flushed engine, in order; the
    bound is their sum (each turn needs the previous answer)."""
    cost: dict[str, float] = {}
    model_cost: dict[str, float] = {}

    async def call(body: dict[str, Any]) -> dict[str, Any]:
        await svc.flush(client)
        t0 = time.perf_counter()
        r = await client.post(svc.engines[0] + "/v1/chat/completions", json=body)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        name = f"t{len(cost)}"
        cost[name] = dt / time_scale
        usage = data.get("usage") or {}
        if svc.simulated:
            m = model_request_s(svc.profile, int(usage.get("prompt_tokens") or 0),
                                int(usage.get("completion_tokens") or body["max_tokens"]))
            if m is not None:
                model_cost[name] = m
        return data

    await run_script(app.script, model, call)
    entry: dict[str, Any] = {"bound_s": sum(cost.values()), "path": list(cost), "step_s": cost}
    if len(model_cost) == len(cost):
        entry["bound_model_s"] = sum(model_cost.values())
    return entry


async def _measure_shape(svc: Services, client: httpx.AsyncClient, app: App, model: str,
                         time_scale: float) -> dict[str, Any]:
    if app.script is not None:
        return await _measure_script(svc, client, app, model, time_scale)
    values: dict[str, str] = {}
    cost: dict[str, float] = {}
    model_cost: dict[str, float] = {}
    for step in topo_order(app.steps):
        await svc.flush(client)
        body = {"model": model, "messages": step.messages(values), "max_tokens": step.max_tokens,
                "temperature": 0.0, "ignore_eos": True}
        t0 = time.perf_counter()
        r = await client.post(svc.engines[0] + "/v1/chat/completions", json=body)
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
    return entry


async def measure_bound(svc: Services, wl: Workload, model: str, time_scale: float,
                        cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Bound per app shape (measured once per shape, kept in ``cache``), then the mean
    over the workload's apps, in all and per app kind (``by_kind``)."""
    shapes: dict[str, App] = {}
    for a in wl.apps:
        shapes.setdefault(a.shape, a)
    per_shape: dict[str, Any] = cache if cache is not None else {}
    async with control_client() as client:
        for shape, app in shapes.items():
            if shape not in per_shape:
                per_shape[shape] = await _measure_shape(svc, client, app, model, time_scale)

    def mean(apps: list[App], key: str) -> float:
        return sum(per_shape[a.shape][key] for a in apps) / len(apps)

    used = {k: per_shape[k] for k in shapes}
    kinds = sorted({a.kind for a in wl.apps})
    out: dict[str, Any] = {
        "bound_s": mean(wl.apps, "bound_s"),
        "by_kind": {k: mean([a for a in wl.apps if a.kind == k], "bound_s") for k in kinds},
        "shapes": used, "method": BOUND_METHOD,
    }
    if all("bound_model_s" in e for e in used.values()):
        out["bound_model_s"] = mean(wl.apps, "bound_model_s")
    return out
