"""Turn per-app results into the reported numbers. Pure.

Every duration exists twice: ``*_wall_s`` as measured, and the un-suffixed
engine-time value (wall / time-scale), which is what a real GPU at
time-scale 1 would take and what compares with the Parrot paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .systems import AppResult


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]; nan for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _r(x: float, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def system_metrics(results: Sequence[AppResult], time_scale: float) -> dict[str, Any]:
    """End-to-end latency, throughput, normalized latency and cache reuse of one run."""
    ok = [r for r in results if r.error is None]
    lat = [r.latency for r in ok]
    nreq = sum(len(r.requests) for r in ok)
    span = (max(r.end for r in ok) - min(r.start for r in ok)) if ok else math.nan
    norm = [r.latency / max(1, r.output_tokens) for r in ok]
    prompt = sum(q.prompt_tokens or 0 for r in ok for q in r.requests)
    cached = sum(q.cached_tokens or 0 for r in ok for q in r.requests)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({r.kind for r in ok}):
        ks = [r for r in ok if r.kind == kind]
        kl = [r.latency for r in ks]
        by_kind[kind] = {
            "apps": len(ks),
            "e2e_mean_s": _r(_mean(kl) / time_scale),
            "e2e_p99_s": _r(percentile(kl, 99) / time_scale),
            "normalized_latency_s_per_token": _r(
                _mean([r.latency / max(1, r.output_tokens) for r in ks]) / time_scale, 6),
        }
    ts = time_scale
    return {
        "apps": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "requests": nreq,
        "e2e_mean_s": _r(_mean(lat) / ts),
        "e2e_p50_s": _r(percentile(lat, 50) / ts),
        "e2e_p99_s": _r(percentile(lat, 99) / ts),
        "throughput_rps": _r(nreq / (span / ts)) if ok and span > 0 else None,
        "throughput_apps_per_s": _r(len(ok) / (span / ts)) if ok and span > 0 else None,
        "makespan_s": _r(span / ts),
        "normalized_latency_s_per_token": _r(_mean(norm) / ts, 6),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cached_token_ratio": _r(cached / prompt) if prompt else None,
        "e2e_mean_wall_s": _r(_mean(lat), 5),
        "e2e_p50_wall_s": _r(percentile(lat, 50), 5),
        "e2e_p99_wall_s": _r(percentile(lat, 99), 5),
        "throughput_rps_wall": _r(nreq / span) if ok and span > 0 else None,
        "by_kind": by_kind,
    }


def workload_summary(systems: dict[str, dict[str, Any]], bound_s: float | None) -> dict[str, Any]:
    """The SPEC section 8 entry of one workload: systems, speedup, bound ratio."""
    out: dict[str, Any] = {"systems": systems}
    base = (systems.get("baseline") or {}).get("e2e_mean_s")
    gw = (systems.get("gateway") or {}).get("e2e_mean_s")
    out["speedup"] = _r(base / gw, 3) if base and gw else None
    out["bound_s"] = _r(bound_s) if bound_s else None
    out["gateway_vs_bound"] = _r(gw / bound_s, 3) if gw and bound_s else None
    out["vs_bound"] = {
        name: _r(m["e2e_mean_s"] / bound_s, 3)
        for name, m in systems.items() if bound_s and m.get("e2e_mean_s")
    }
    out["speedup_vs"] = {
        name: _r(m["e2e_mean_s"] / gw, 3)
        for name, m in systems.items() if gw and m.get("e2e_mean_s")
    }
    return out
