"""``bench WORKLOAD --sweep``: capacity, latency against offered load, goodput at SLO.

Per workload, on the same engines, in one invocation:

1. **Capacity** of every system: a closed loop keeping ``K`` app instances in
   flight; apps/s completed after a warm-up (the first ``K`` completions)
   over a window of at least ``point_apps`` apps and ``point_seconds``
   engine-seconds. ``K`` is found once on the reference system (the
   baseline): doubled from ``2 x engines`` until two doublings in a row add
   less than 10%, so the engines are saturated (``--capacity-k`` fixes it).
   Throughput is read from the slots' cycle times (``ClosedLoop``), not from
   completions over the window, which reads low when apps finish in waves.
2. **Latency vs load**: open-loop Poisson arrivals at fixed fractions of the
   *baseline's* capacity (the same rates for every system), each point with
   ``max(point_apps, rate x point_seconds)`` apps; latency is taken over the
   apps arriving after the first 10% of the point (warm-up).
3. **Goodput at SLO**: the highest offered rate whose p90 app latency stays
   within ``slo_factor`` (3) x the workload's critical-path bound, for every
   app kind of the workload; linear interpolation between the last swept
   point that meets the SLO and the first that misses it. A system that still
   meets it at the top point gets up to ``sweep_extend`` extra points at
   1.25x steps, so its goodput is measured, not capped by the sweep.
"""

from __future__ import annotations

import math
from typing import Any

from .bench import Bench, open_loop, run_line
from .harness import AppPool, apps_needed, run_closed
from .metrics import _r, goodput, percentile, slo_ratio, system_metrics, workload_summary
from .systems import AppResult
from .workloads import SWEEPABLE, Arrival, Workload, app_maker, build_workload, size_params

WARMUP_FRACTION = 0.1
K_GROWTH = 1.10  # a doubling of K that adds less than this much throughput: saturated
THINK_BOUNDS = 1.0  # a closed-loop slot's mean think time, in critical-path bounds


def _closed_args(b: Bench, k: int, search: bool) -> tuple[int, float, float]:
    """(min apps, min wall s, max wall s) of a closed-loop run."""
    cfg, ts = b.cfg, b.cfg.time_scale
    if search:  # probes of the K search: shorter windows, but at least 2K apps (noise)
        max_wall = max(120.0, cfg.point_seconds * 2) * ts
        return max(2 * k, cfg.point_apps // 2), cfg.point_seconds / 4 * ts, max_wall
    # At least 2K apps here too: with fewer, a window of a large K's synchronized waves
    # measured a fraction of the throughput (K=64: 1.07 apps/s over 33 apps, against 2.69
    # over 128 in its probe).
    return max(2 * k, cfg.point_apps), cfg.point_seconds * ts, max(300.0, cfg.point_seconds * 5) * ts


async def closed_run(b: Bench, name: str, sname: str, apps: AppPool, k: int, bound_s: float,
                     search: bool = False) -> dict[str, Any]:
    """One closed-loop run of ``sname``; its metrics with ``apps_per_s`` (engine time).
    Apps are built before the run, as many as the highest possible throughput needs:
    K / bound (Little's law: no app finishes faster than its critical-path bound). Each
    slot thinks ``THINK_BOUNDS`` bounds on average between its apps (``run_closed``)."""
    ts = b.cfg.time_scale
    min_apps, min_wall, max_wall = _closed_args(b, k, search)
    think_s = THINK_BOUNDS * bound_s * ts
    apps.ensure(apps_needed(k, min_apps, min_wall / ts, k / bound_s if bound_s else None))
    key = f"{name} K={k}" + (" probe" if search else "")
    run = await b.run(
        sname, lambda system, done: run_closed(system, apps, k, min_apps, min_wall, max_wall, done,
                                              think_s=think_s, seed=b.cfg.seed), key)
    closed = run.closed
    assert closed is not None
    window = closed.window
    measured = [r for r in run.results if r.error is None and window and window[0] < r.end <= window[1]]
    m = b.metrics(run, name, f"capacity K={k}", measured, record=not search)
    tp = closed.throughput_wall
    counted = closed.throughput_counted
    m.update({"k": k, "apps_per_s": _r(tp * ts) if tp else 0.0,
              "apps_per_s_counted": _r(counted * ts) if counted else 0.0,
              "window_s": _r((window[1] - window[0]) / ts) if window else None,
              "apps_in_window": closed.completed_in_window, "apps_started": len(run.results)})
    if not search:
        b.write_raw(f"{name}-capacity-{sname}", {"workload": name, "k": k, "window": window,
                                                  "systems": {sname: [r.to_json() for r in run.results]}})
    b.log(f"[{key}] {sname}: {m['apps_per_s']} apps/s over {m['apps_in_window']} apps; "
          + run_line(key, sname, m))
    return m


def best_k(probes: list[dict[str, Any]]) -> int:
    """The K of the highest throughput probed: past the knee, more apps in flight can
    lose throughput (map-reduce: 2.82 apps/s at K=16, 2.36 at K=32). Pure."""
    return max(probes, key=lambda p: (p["apps_per_s"], -p["k"]))["k"]


def saturated(probes: list[dict[str, Any]]) -> bool:
    """Two doublings of K in a row that each added less than ``K_GROWTH`` over the best
    throughput before them: the engines are saturated. One such doubling is not enough:
    the throughput approaches saturation slowly and a probe is noisy (map-reduce
    baseline: 1.89 apps/s at K=8, 1.85 at K=16, then 2.55 at K=32). Pure."""
    def missed(i: int) -> bool:
        return probes[i]["apps_per_s"] < max(p["apps_per_s"] for p in probes[:i]) * K_GROWTH
    return len(probes) >= 3 and missed(len(probes) - 1) and missed(len(probes) - 2)


async def find_k(b: Bench, name: str, make: AppPool, bound_s: float) -> tuple[int, list[dict[str, Any]]]:
    """Double K on the reference system until the throughput stops growing; the best K."""
    if b.cfg.capacity_k:
        return b.cfg.capacity_k, []
    k = max(2, 2 * len(b.svc.engines))
    if b.cfg.quick:
        return 2 * k, []
    probes: list[dict[str, Any]] = []
    for _ in range(6):
        m = await closed_run(b, name, b.reference(), make, k, bound_s, search=True)
        probes.append({"k": k, "apps_per_s": m["apps_per_s"]})
        if saturated(probes):
            break
        k *= 2
    return best_k(probes), probes


async def measure_capacity(b: Bench, name: str, systems: list[str]) -> dict[str, Any]:
    """Closed-loop capacity of ``systems`` (reference first) at the K found on the reference."""
    make = AppPool(app_maker(name, b.cfg.size, b.cfg.seed))
    make.ensure(8)
    bound_s = (await b.bound(Workload(name, b.cfg.size, [Arrival(0.0, a) for a in make.apps])))["bound_s"]
    k, probes = await find_k(b, name, make, bound_s)
    order = [b.reference()] + [s for s in systems if s != b.reference()]
    runs: dict[str, Any] = {}
    for sname in order:
        runs[sname] = await closed_run(b, name, sname, make, k, bound_s)
    return {
        "capacity_apps_per_s": {s: runs[s]["apps_per_s"] for s in order},
        "capacity_k": k,
        "capacity_search": probes,
        "capacity_runs": runs,
    }


def _measured(arrivals: list[Any], results: list[AppResult]) -> list[AppResult]:
    span = max((a.at_s for a in arrivals), default=0.0)
    return [r for a, r in zip(arrivals, results) if a.at_s >= WARMUP_FRACTION * span]


def _p90_by_kind(results: list[AppResult], ts: float) -> dict[str, float | None]:
    kinds: dict[str, list[float]] = {}
    failed: set[str] = set()
    for r in results:
        if r.error is not None:
            failed.add(r.kind)
        else:
            kinds.setdefault(r.kind, []).append(r.latency)
    return {k: (None if k in failed else percentile(v, 90) / ts) for k, v in kinds.items()} | {
        k: None for k in failed}


SEED_STRIDE = 7919  # repeat r of a sweep point draws its apps and arrivals from seed + r x this


async def run_point(b: Bench, name: str, rate: float, load: float, systems: list[str],
                    extension: bool = False) -> dict[str, Any]:
    """One offered rate, every system in ``systems``, ``repeats`` times (the systems
    take turns within each repeat, so a drift hits them alike): the sweep entry, its
    latency over the apps of every repeat."""
    cfg, ts = b.cfg, b.cfg.time_scale
    n = max(cfg.point_apps, math.ceil(rate * cfg.point_seconds))
    key = f"{name}@{rate:.4g}"
    label = f"load {load:.3g}" + (" (extension)" if extension else "")
    entry: dict[str, Any] = {"rate": _r(rate), "load": _r(load, 3), "systems": {}}
    if extension:
        entry["extension"] = True
    runs: dict[str, list[tuple[dict[str, Any], list[AppResult]]]] = {s: [] for s in systems}
    bound: dict[str, Any] = {}
    for rep in range(cfg.repeats):
        wl = build_workload(name, cfg.size, cfg.seed + rep * SEED_STRIDE, n, rate)
        bound = bound or await b.bound(wl)
        rkey = key + (f" run {rep + 1}" if cfg.repeats > 1 else "")
        b.log(f"[{rkey}] {label}: {len(wl.apps)} apps ({n} at {rate:.3g}/s), {wl.requests} requests")
        raw: dict[str, Any] = {"workload": name, "rate": rate, "load": load, "repeat": rep,
                               "params": wl.params, "bound": bound, "engines": b.svc.long_label,
                               "systems": {}}
        for sname in systems:
            run = await b.run(sname, open_loop(wl, ts), rkey, len(wl.arrivals))
            measured = _measured(wl.arrivals, run.results)
            m = b.metrics(run, name, f"rate {rate:.3g}/s" + (f" run {rep + 1}" if cfg.repeats > 1 else ""),
                          measured)
            m["apps_measured"] = len(measured)
            runs[sname].append((m, measured))
            raw["systems"][sname] = [r.to_json() for r in run.results]
            b.log(run_line(rkey, sname, m))
        b.write_raw(key if cfg.repeats == 1 else f"{key}-run{rep + 1}", raw)
    entry["apps"] = n * cfg.repeats
    for sname, done in runs.items():
        m = done[0][0] if len(done) == 1 else pool_repeats(done, ts)
        measured = [r for _, rs in done for r in rs]
        ratio = slo_ratio(_p90_by_kind(measured, ts), bound["by_kind"], cfg.slo_factor)
        m["slo_ratio"] = None if math.isinf(ratio) else _r(ratio, 4)  # None: some apps failed
        entry["systems"][sname] = m
        b.log(f"[{key}] {sname}: SLO ratio {m['slo_ratio']}"
              + (f" over {len(done)} repeats, e2e mean {m['e2e_mean_s']} s" if len(done) > 1 else ""))
    entry["bound_by_kind"] = {k: _r(v) for k, v in bound["by_kind"].items()}
    entry["bound_s"] = bound["bound_s"]
    return entry


def pool_repeats(done: list[tuple[dict[str, Any], list[AppResult]]], ts: float) -> dict[str, Any]:
    """One system's repeats of a point as one entry: latency and cache reuse over every
    measured app; throughput and utilization the mean of the repeats; the harness's lag
    and CPU the worst repeat's; comparable only if every repeat was; ``repeats`` lists each
    repeat's own latency. Pure."""
    ms = [m for m, _ in done]
    out = dict(ms[0])
    out.update(system_metrics([r for _, rs in done for r in rs], ts))
    out["apps_measured"] = sum(m.get("apps_measured", 0) for m in ms)
    out["apps"] = sum(m.get("apps", 0) for m in ms)
    for k in ("throughput_apps_per_s", "throughput_rps", "engine_utilization", "cpu_services_share"):
        vals = [m[k] for m in ms if m.get(k) is not None]
        out[k] = _r(sum(vals) / len(vals), 4) if vals else None
    out["harness"] = {k: max((m["harness"].get(k) or 0.0) for m in ms) for k in ms[0]["harness"]}
    out["cpu"] = {role: max(m["cpu"].get(role, 0.0) for m in ms) for role in ms[0]["cpu"]}
    out["comparable"] = all(m["comparable"] for m in ms)
    why = [w for m in ms for w in m.get("not_comparable", [])]
    out.pop("not_comparable", None)
    if why:
        out["not_comparable"] = sorted(set(why))
    out["repeats"] = [{k: m.get(k) for k in ("e2e_mean_s", "e2e_p90_s", "e2e_p99_s", "comparable")}
                      for m in ms]
    return out


async def run_sweep(b: Bench, name: str) -> dict[str, Any]:
    """Capacity, the latency-vs-load sweep and goodput of ``name`` on every system."""
    cfg = b.cfg
    if name not in SWEEPABLE:
        raise SystemExit(f"--sweep: {name!r} is a fixed timeline; sweepable: {', '.join(SWEEPABLE)} "
                         "(mixed-heavy is mixed under load)")
    cap = await measure_capacity(b, name, b.systems)
    base = cap["capacity_apps_per_s"][b.reference()]
    if not base:
        raise SystemExit(f"{name}: {b.reference()} completed no app in its capacity window")
    points = [await run_point(b, name, f * base, f, b.systems) for f in sorted(cfg.loads)]
    rate = max(p["rate"] for p in points)
    for _ in range(cfg.sweep_extend):  # systems still within the SLO at the top: go on
        passing = [s for s in b.systems if _passes(points[-1], s)]
        if not passing:
            break
        rate *= 1.25
        points.append(await run_point(b, name, rate, rate / base, passing, extension=True))
    good, notes = {}, {}
    for s in b.systems:
        curve = [(p["rate"], p["systems"][s]["slo_ratio"]) for p in points if s in p["systems"]]
        g, why = goodput([(r, q if q is not None else math.inf) for r, q in curve])
        good[s], notes[s] = _r(g), why
    ref_load = max((f for f in cfg.loads if f <= 1.0), default=min(cfg.loads))
    ref = next(p for p in points if p["load"] == _r(ref_load, 3) and not p.get("extension"))
    bound = ref["bound_by_kind"]
    entry = workload_summary(ref["systems"], ref["bound_s"])
    entry.update({
        "reference_load": ref_load,
        "reference_rate": ref["rate"],
        "reference_system": b.reference(),
        "params": {**size_params(name, cfg.size), "seed": cfg.seed},
        "bound_by_kind": bound,
        "slo_s": {k: _r(cfg.slo_factor * v) for k, v in bound.items() if v},
        "slo": f"p90 app latency <= {cfg.slo_factor:g} x the critical-path bound, for every app kind",
        "capacity_apps_per_s": cap["capacity_apps_per_s"],
        "goodput_apps_per_s": good,
        "goodput_note": notes,
        "sweep": [_sweep_entry(p) for p in points],
        "capacity_k": cap["capacity_k"],
        "capacity_search": cap["capacity_search"],
        "capacity_runs": cap["capacity_runs"],
        "sweep_method": {"loads": list(cfg.loads), "point_apps": cfg.point_apps,
                         "point_seconds": cfg.point_seconds, "warmup_fraction": WARMUP_FRACTION,
                         "goodput": "linear interpolation of p90/SLO between the last point meeting the "
                                    "SLO and the first missing it; extension points at 1.25x steps"},
        "not_comparable": b.not_comparable(name),
    })
    return entry


def _passes(point: dict[str, Any], system: str) -> bool:
    m = point["systems"].get(system)
    return m is not None and m["slo_ratio"] is not None and m["slo_ratio"] <= 1.0


SWEEP_KEYS = ("e2e_mean_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s", "apps", "apps_measured", "failed",
              "throughput_apps_per_s", "engine_utilization", "cached_token_ratio", "slo_ratio", "harness",
              "cpu", "cpu_services_share", "warnings", "comparable", "not_comparable", "by_kind", "repeats")


def _sweep_entry(p: dict[str, Any]) -> dict[str, Any]:
    """The SPEC shape ``{rate, systems: {s: {e2e_mean_s, e2e_p90_s, e2e_p99_s, ...}}}``."""
    out = {k: p[k] for k in ("rate", "load", "apps", "extension") if k in p}
    out["bound_s"] = _r(p["bound_s"])
    out["systems"] = {s: {k: m[k] for k in SWEEP_KEYS if k in m} for s, m in p["systems"].items()}
    return out

