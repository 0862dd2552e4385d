"""The shared state of one ``bench`` invocation and how one system is run and measured.

``Bench.run`` warms a system up, flushes the engines, drives it (open or closed
loop) while recording the harness's own lag and every process's CPU, and reads
service-side timings only after the measured span. ``Bench.metrics`` turns a
run into the reported numbers and marks it not comparable when the harness
lagged or the load generator or the system's proxy was CPU-bound.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .affinity import Affinity
from .bound import control_client, measure_bound
from .harness import ClosedLoop, CpuMeter, LoopLag, run_open
from .httpclient import make_client
from .metrics import (
    Reason,
    Thresholds,
    comparability,
    lag_metrics,
    proxy_roles,
    summarize_reasons,
    system_metrics,
)
from .services import Services
from .systems import AppResult, System, make_system
from .workloads import App, Step, Workload

DEFAULT_LOADS = (0.5, 0.7, 0.85, 0.95, 1.05)


WARM_CONNECTIONS = 512  # opened per target before each measured run (httpclient.HttpClient)


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
    sweep: bool = False
    loads: Sequence[float] = DEFAULT_LOADS
    """Sweep points as fractions of the reference (baseline) system's capacity."""
    load: float | None = None
    """Without --sweep: one point at this fraction of the baseline's capacity."""
    point_apps: int = 30
    point_seconds: float = 60.0
    """Apps per sweep point: at least ``point_apps`` and at least ``point_seconds`` worth."""
    capacity_k: int | None = None
    repeats: int = 1
    """Runs per sweep point and system (each on its own arrivals): single runs near
    saturation differ by up to ~1.5x, so a ratio needs several."""
    sweep_extend: int = 2
    quick: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    slo_factor: float = 3.0
    affinity: Affinity | None = None
    http_client: str = "lean"


@dataclass
class Run:
    """One system under one load: raw results and what the harness saw of itself."""

    system: str
    results: list[AppResult]
    wall_s: float
    engine_busy_s: float | None
    cpu: dict[str, float]
    loop_lag_ms: list[float]
    gc_pauses_ms: list[float] = field(default_factory=list)
    closed: ClosedLoop | None = None


class Bench:
    """The shared state of one invocation: services, config, bound cache, verdicts."""

    def __init__(self, cfg: BenchConfig, svc: Services, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.svc = svc
        self.log = log
        self.systems = [s for s in cfg.systems if (s != "sglang-router" or svc.router)
                        and ("-2r" not in s or svc.replicas)]
        self.rtt_s = cfg.client_rtt_ms / 1000.0 * cfg.time_scale  # engine ms, scaled like the engines
        self.bound_cache: dict[str, Any] = {}
        self.verdicts: dict[str, dict[str, list[tuple[Reason, str]]]] = {}

    # ------------------------------------------------------------------ pieces

    def reference(self) -> str:
        """The system whose capacity defines the sweep's rates."""
        return "baseline" if "baseline" in self.systems else self.systems[0]

    async def bound(self, wl: Workload) -> dict[str, Any]:
        return await measure_bound(self.svc, wl, self.svc.model, self.cfg.time_scale, self.bound_cache)

    def _roles(self) -> dict[str, tuple[int, bool]]:
        roles = {"harness": (os.getpid(), False)}
        roles.update({role: (pid, True) for role, pid in self.svc.pids().items()})
        return roles

    def bar(self, total: int | None, desc: str) -> Any:
        if not self.cfg.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return None
        return tqdm(total=total, desc=desc, leave=False, disable=None)

    async def run(self, sname: str, drive: Callable[[System, Callable[[], None]], Awaitable[Any]],
                  desc: str, total: int | None = None) -> Run:
        """Warm up ``sname``, flush the engines, then ``drive`` it while measuring the
        harness's lag and every process's CPU; service-side timings are read after."""
        async with control_client() as ctl, make_client(self.cfg.http_client) as http:
            system = make_system(sname, http, engines=self.svc.engines, gateway=self.svc.gateway,
                                 router=self.svc.router, model=self.svc.model, rtt_s=self.rtt_s,
                                 replicas=self.svc.replicas, variants=self.svc.variants,
                                 replicas_by_session=self.svc.replicas_by_session)
            await system.run_app(App("warmup", f"warmup-{sname}", (Step("w", "Say hello.", 2),), ("w",)))
            await system.finish()
            for url in system.targets:  # a burst that opens its connections sends late
                await http.warm(url, WARM_CONNECTIONS)
            await self.svc.flush(ctl)
            busy0 = await self.svc.busy_seconds(ctl)
            bar = self.bar(total, f"{desc} {sname}")
            meter, lag = CpuMeter(self._roles()), LoopLag()
            meter.start()
            lag.start()
            t0 = time.time()
            try:
                out = await drive(system, (lambda: bar.update(1)) if bar is not None else (lambda: None))
            finally:
                wall = time.time() - t0
                loop_lag = await lag.stop()
                cpu = meter.stop()
                if bar is not None:
                    bar.close()
            busy1 = await self.svc.busy_seconds(ctl)
            await system.finish()
        closed = out if isinstance(out, ClosedLoop) else None
        results = closed.results if closed is not None else list(out)
        busy = busy1 - busy0 if busy0 is not None and busy1 is not None else None
        return Run(sname, results, wall, busy, cpu, loop_lag, lag.gc_pauses_ms, closed)

    def metrics(self, run: Run, workload: str, where: str, measured: Sequence[AppResult] | None = None,
                record: bool = True) -> dict[str, Any]:
        """Latency and harness lag over ``measured`` (default: every app of the run), CPU
        and loop lag over the whole run; why the run is not comparable, if it is not (kept
        for the summary's ``not_comparable`` unless ``record`` is false: K-search probes)."""
        ts = self.cfg.time_scale
        reported = list(measured if measured is not None else run.results)
        m = system_metrics(reported, ts)
        m["apps"] = len(run.results)
        if measured is not None:
            m["apps_measured"] = len(measured)
        m["wall_s"] = round(run.wall_s, 4)
        if run.engine_busy_s is not None and run.wall_s > 0:
            m["engine_busy_s"] = round(run.engine_busy_s, 4)
            m["engine_utilization"] = round(run.engine_busy_s / (run.wall_s / ts * len(self.svc.engines)), 4)
        # The lag of the apps whose latency is reported (a closed loop's first burst of K
        # apps at once is warm-up, like an open loop's first arrivals).
        m["harness"] = lag_metrics(reported, run.loop_lag_ms, ts)
        m["harness"]["gc_pause_max_ms"] = round(max(run.gc_pauses_ms, default=0.0), 3)
        m["cpu"] = run.cpu
        services = sum(v for k, v in run.cpu.items() if k != "harness")
        ncores = len(self.cfg.affinity.services) if self.cfg.affinity and self.cfg.affinity.services else (
            os.cpu_count() or 1)
        m["cpu_services_share"] = round(services / ncores, 4)
        if m["cpu_services_share"] > 0.9:
            m["warnings"] = [f"the services' CPUs were {m['cpu_services_share']:.0%} busy: simulated engines "
                             "may have run slow for every system"]
        closed_mean = m.get("e2e_mean_s") if run.closed is not None else None
        why = comparability(m["harness"], run.cpu, run.system, self.cfg.thresholds, closed_mean)
        m["comparable"] = not why
        if why:
            m["not_comparable"] = [r.text() for r in why]
        if why and record:
            self.verdicts.setdefault(workload, {}).setdefault(run.system, []).extend((r, where) for r in why)
        return m

    def not_comparable(self, workload: str) -> dict[str, str]:
        """``{system: reason}``: each kind of reason with its worst value and the runs."""
        return {s: summarize_reasons(found) for s, found in self.verdicts.get(workload, {}).items()}

    def write_raw(self, key: str, raw: dict[str, Any]) -> None:
        (self.cfg.out / "raw" / f"{key}.json").write_text(json.dumps(raw, indent=1, default=str))


def open_loop(wl: Workload, time_scale: float) -> Callable[[System, Callable[[], None]], Awaitable[Any]]:
    return lambda system, done: run_open(system, wl.arrivals, time_scale, done)


def run_line(key: str, sname: str, m: dict[str, Any]) -> str:
    h, cpu = m["harness"], m["cpu"]
    flag = "" if m.get("comparable", True) else "  NOT COMPARABLE: " + "; ".join(m["not_comparable"])
    proxies = "".join(f", {r} {cpu.get(r, 0):.0%}" for r in proxy_roles(sname))
    return (f"[{key}] {sname}: e2e mean {m['e2e_mean_s']} s, p90 {m['e2e_p90_s']} s, p99 {m['e2e_p99_s']} s, "
            f"failed {m['failed']}; lag p99 start {h['start_lag_p99_ms']} / send {h['send_lag_p99_ms']} ms; "
            f"cpu harness {cpu.get('harness', 0):.0%}" + proxies + flag)


