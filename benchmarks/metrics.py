"""Turn per-app results into the reported numbers. Pure.

Every duration exists twice: ``*_wall_s`` as measured, and the un-suffixed
engine-time value (wall / time-scale), which is what a real GPU at
time-scale 1 would take and what compares with the Parrot paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    by_kind = kind_metrics(ok, time_scale)
    ts = time_scale
    return {
        "apps": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "requests": nreq,
        "e2e_mean_s": _r(_mean(lat) / ts),
        "e2e_p50_s": _r(percentile(lat, 50) / ts),
        "e2e_p90_s": _r(percentile(lat, 90) / ts),
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


def kind_metrics(ok: Sequence[AppResult], time_scale: float) -> dict[str, dict[str, Any]]:
    """Per app kind: latency; for streamed chats also time to first token (from the
    request leaving the client, without the injected client delay) and normalized
    latency (s per output token) percentiles; with chats beside other kinds, a
    ``batch`` entry: job completion time (JCT) of every non-chat app."""
    ts = time_scale
    out: dict[str, dict[str, Any]] = {}
    groups = {kind: [r for r in ok if r.kind == kind] for kind in sorted({r.kind for r in ok})}
    if "chat" in groups and len(groups) > 1:
        groups["batch"] = [r for r in ok if r.kind != "chat"]
    for kind, ks in groups.items():
        kl = [r.latency for r in ks]
        norm = [r.latency / max(1, r.output_tokens) for r in ks]
        m: dict[str, Any] = {
            "apps": len(ks),
            "e2e_mean_s": _r(_mean(kl) / ts),
            "e2e_p50_s": _r(percentile(kl, 50) / ts),
            "e2e_p90_s": _r(percentile(kl, 90) / ts),
            "e2e_p99_s": _r(percentile(kl, 99) / ts),
            "normalized_latency_s_per_token": _r(_mean(norm) / ts, 6),
        }
        if kind == "chat":
            ttft = [q.first_token - q.issued for r in ks for q in r.requests
                    if q.first_token is not None and q.issued is not None]
            m.update({
                "ttft_p50_s": _r(percentile(ttft, 50) / ts, 5),
                "ttft_p99_s": _r(percentile(ttft, 99) / ts, 5),
                "ttft_mean_s": _r(_mean(ttft) / ts, 5),
                "normalized_latency_p50_s_per_token": _r(percentile(norm, 50) / ts, 6),
                "normalized_latency_p99_s_per_token": _r(percentile(norm, 99) / ts, 6),
            })
        if kind == "batch":
            m.update({"jct_mean_s": m["e2e_mean_s"], "jct_p99_s": m["e2e_p99_s"]})
        out[kind] = m
    return out


# ------------------------------------------------------------------ the harness's own health


@dataclass(frozen=True)
class Thresholds:
    """When a run stops being a fair comparison: the harness lagged (p99, engine ms) or
    the load generator or the system's proxy process used more than ``max_cpu`` of a core."""

    max_lag_ms: float = 5.0
    max_cpu: float = 0.7
    closed_lag_share: float = 0.01
    """A closed loop measures throughput: an app started or sent late by ``lag`` shifts
    it by at most lag / app latency, so its lag bar is this share of the mean app
    latency when that is above ``max_lag_ms`` (a synchronized burst of K x fan-out sends
    from one client cannot leave within 5 ms; 1% of a 10 s app can)."""


# The processes whose CPU limits each system (its proxy); the baseline has none.
REPLICA_ROLES = ("gateway-r0", "gateway-r1")
PROXY_ROLES: dict[str, tuple[str, ...]] = {
    "gateway": ("gateway",), "gateway-plain": ("gateway",), "sglang-router": ("smg",),
    "gateway-2r": REPLICA_ROLES, "gateway-plain-2r": REPLICA_ROLES, "gateway-2r-session": REPLICA_ROLES,
}


def proxy_roles(system: str) -> tuple[str, ...]:
    """The processes whose CPU limits ``system``; a variant (``gateway-*`` not above) is
    a gateway process named after it."""
    roles = PROXY_ROLES.get(system)
    if roles is not None:
        return roles
    return (system,) if system.startswith("gateway-") else ()


def lag_metrics(results: Sequence[AppResult], loop_lag_ms: Sequence[float],
                time_scale: float) -> dict[str, Any]:
    """The harness's lateness (engine ms): app starts after their planned arrival, client
    requests after their inputs were ready (gateway DAG: submits after the app started or
    its inputs finished), and the event loop's ticker overshoot (over the whole run)."""
    start = [r.start_lag * 1000 for r in results]
    send = [q.send_lag_ms for r in results for q in r.requests if q.send_lag_ms is not None]
    ts = time_scale
    return {
        "start_lag_p99_ms": _r(percentile(start, 99) / ts, 3),
        "start_lag_max_ms": _r(max(start, default=math.nan) / ts, 3),
        "send_lag_p99_ms": _r(percentile(send, 99) / ts, 3),
        "send_lag_max_ms": _r(max(send, default=math.nan) / ts, 3),
        "loop_lag_p99_ms": _r(percentile(list(loop_lag_ms), 99) / ts, 3),
        "sends": len(send),
    }


@dataclass(frozen=True)
class Reason:
    """One way a run stopped being a fair comparison."""

    what: str
    """``harness lag: step send p99``, ``CPU-bound: gateway``, ..."""
    value: float
    limit: float
    unit: str  # "ms" or "core"

    def text(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        if self.unit == "core":
            return f"{self.what} used {v:.0%} of a core (> {self.limit:.0%})"
        return f"{self.what} {v:.1f} ms (> {self.limit:g} ms)"


def comparability(lag: dict[str, Any], cpu: dict[str, float], system: str,
                  th: Thresholds = Thresholds(), closed_mean_s: float | None = None) -> list[Reason]:
    """Why this run is not a fair comparison (empty when it is); ``closed_mean_s``: the
    mean app latency (engine s) of a closed-loop run, which relaxes the lag bar to
    ``th.closed_lag_share`` of it. Pure."""
    why = []
    limit = th.max_lag_ms
    if closed_mean_s is not None and math.isfinite(closed_mean_s):
        limit = max(limit, round(th.closed_lag_share * closed_mean_s * 1000, 1))
    for key, what in (("start_lag_p99_ms", "app start"), ("send_lag_p99_ms", "step send")):
        v = lag.get(key)
        if v is not None and v > limit:
            why.append(Reason(f"harness lag: {what} p99", v, limit, "ms"))
    if cpu.get("harness", 0.0) > th.max_cpu:
        why.append(Reason("CPU-bound: load generator", cpu["harness"], th.max_cpu, "core"))
    for role in proxy_roles(system):
        if cpu.get(role, 0.0) > th.max_cpu:
            why.append(Reason(f"CPU-bound: {role}", cpu[role], th.max_cpu, "core"))
    return why


def summarize_reasons(found: Sequence[tuple[Reason, str]]) -> str:
    """One line per kind of reason: the worst value and where it happened. Pure."""
    worst: dict[str, Reason] = {}
    where: dict[str, list[str]] = {}
    for r, w in found:
        if r.what not in worst or r.value > worst[r.what].value:
            worst[r.what] = r
        where.setdefault(r.what, []).append(w)
    return "; ".join(f"{r.text()} at {', '.join(dict.fromkeys(where[k]))}" for k, r in worst.items())


# ------------------------------------------------------------------ goodput at SLO


def slo_ratio(p90_by_kind: dict[str, float | None], bound_by_kind: dict[str, float],
              factor: float = 3.0) -> float:
    """max over app kinds of p90 latency / (factor x that kind's critical-path bound):
    <= 1 meets the SLO. A kind without a p90 (all its apps failed) misses it. Pure."""
    worst = 0.0
    for kind, bound in bound_by_kind.items():
        p90 = p90_by_kind.get(kind)
        if p90 is None or not bound:
            return math.inf
        worst = max(worst, p90 / (factor * bound))
    return worst


def goodput(points: Sequence[tuple[float, float]]) -> tuple[float, str]:
    """Highest offered rate meeting the SLO, from ``(rate, slo_ratio)`` points: linear
    interpolation of the ratio between the last point that meets it and the first that
    misses it (points are not re-measured). Pure."""
    prev: tuple[float, float] | None = None
    for rate, ratio in sorted(points):
        if ratio > 1.0:
            if prev is None:
                return 0.0, f"SLO missed already at the lowest rate swept ({rate:g}/s)"
            r1, q1 = prev
            if math.isinf(ratio):
                return r1, f"met at {r1:g}/s; apps failed at {rate:g}/s"
            r = r1 + (1.0 - q1) / (ratio - q1) * (rate - r1)
            return r, f"interpolated between {r1:g}/s (met) and {rate:g}/s (missed)"
        prev = (rate, ratio)
    if prev is None:
        return 0.0, "no points"
    return prev[0], f"met at every rate swept: at least {prev[0]:g}/s"


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
