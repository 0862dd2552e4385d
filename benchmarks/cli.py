"""`parrot-gateway bench WORKLOAD... [flags]`: start what is needed, run, report.

Examples (simulated engines at the speed of a real H100, time-scale 1):

    parrot-gateway bench map-reduce chain --size small --out /tmp/bench
    parrot-gateway bench map-reduce --sweep --out /tmp/sweep     # capacity, latency vs load, goodput
    parrot-gateway bench mixed-heavy --out /tmp/mixed            # batch at 0.9 x capacity + chats

The simulated engines get CPUs of their own (they stand in for GPUs, which no proxy
slows); the harness and the systems under test get the others (--pin). A system is
marked "not comparable" when the harness lagged (> --max-lag-ms p99) or the load
generator or the system's proxy used more than --max-cpu of a core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .workloads import SIZES, WORKLOADS

if TYPE_CHECKING:
    from .runner import BenchConfig

DEFAULT_LOADS = "0.5,0.7,0.85,0.95,1.05"

ALL = list(WORKLOADS)
# Benchmarks of their own shape: proxy overhead, and plain chat traffic in a closed loop.
SPECIAL = ("overhead", "plain")
DEFAULT_SYSTEMS = "baseline,gateway-plain,gateway,sglang-router"
# agents: unmodified clients only (no semantic form), with and without program inference
AGENT_SYSTEMS = "baseline,sglang-router,gateway-plain,gateway-plain-noinfer"


def _rates(text: str | None) -> list[float | None]:
    if not text:
        return [None]
    return [float(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parrot-gateway bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="+", metavar="WORKLOAD",
                   help=f"{', '.join(ALL)}, {', '.join(SPECIAL)}, or all")
    p.add_argument("--systems", default=None,
                   help=f"comma-separated (default {DEFAULT_SYSTEMS}; for agents alone "
                        f"{AGENT_SYSTEMS}; sglang-router skipped if smg is missing)")
    p.add_argument("--engines", type=int, default=2, help="simulated engines to start (default 2)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="wall time per engine second of the simulated engines (default 1.0; smaller "
                        "values are for CI and are labelled as such: they magnify every CPU cost)")
    p.add_argument("--profile", default="h100-llama3-8b", help="simulated engine cost profile")
    p.add_argument("--backend", action="extend", nargs="+", default=[], metavar="URL",
                   help="real engine URL(s) instead of simulated ones (repeatable; time-scale then 1)")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--out", default="bench-out", help="output directory (default ./bench-out)")
    p.add_argument("--apps", type=int, default=None, help="application instances per workload")
    p.add_argument("--rate", default=None,
                   help="Poisson app arrival rate(s) per engine-second, comma-separated sweep")
    p.add_argument("--client-rtt-ms", type=float, default=0.0,
                   help="client network round trip in engine ms (half before, half after each call)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTING=VALUE,...",
                   help="also run a gateway with these settings changed, as system NAME (gateway-... "
                        "driven like gateway, gateway-plain-... like gateway-plain); repeatable, e.g. "
                        "gateway-budget2:prefill_budget_chunks=2")
    sat = p.add_argument_group("saturation (--sweep)")
    sat.add_argument("--sweep", action="store_true",
                     help="per system: closed-loop capacity, latency at --loads x the baseline's capacity, "
                          "goodput at SLO")
    sat.add_argument("--loads", default=DEFAULT_LOADS,
                     help=f"sweep points as fractions of the baseline's capacity (default {DEFAULT_LOADS})")
    sat.add_argument("--load", type=float, default=None,
                     help="without --sweep: one run at this fraction of the baseline's measured capacity "
                          "(mixed-heavy defaults to 0.9)")
    sat.add_argument("--point-apps", type=int, default=None,
                     help="at least this many apps per sweep point and capacity window (default 30)")
    sat.add_argument("--point-seconds", type=float, default=None,
                     help="and at least this many engine-seconds of arrivals (default 60)")
    sat.add_argument("--capacity-k", type=int, default=None,
                     help="apps kept in flight for capacity (default: doubled until the throughput "
                          "stops growing)")
    sat.add_argument("--repeats", type=int, default=1,
                     help="runs per sweep point and system, each on its own arrivals; latency "
                          "over all of them, each repeat's own in summary.json (default 1)")
    sat.add_argument("--sweep-extend", type=int, default=None,
                     help="extra points at 1.25x steps for systems still within the SLO at the top "
                          "(default 2)")
    sat.add_argument("--slo-factor", type=float, default=3.0,
                     help="SLO: p90 app latency <= this x the critical-path bound (default 3)")
    sat.add_argument("--quick", action="store_true",
                     help="CI-sized: 8 apps per point, no steady-state minimum, no K search, no extension "
                          "(labelled in the output; not for comparison)")
    hn = p.add_argument_group("harness")
    hn.add_argument("--pin", default="auto",
                    help="CPU pinning: auto (2-3 CPUs: harness and systems under test on the first, "
                         "engines on the rest; 4+: a quarter each for harness and systems, the rest "
                         "for engines; off on 1 CPU), off, HARNESS:SERVICES (0:1) or "
                         "HARNESS:ENGINES:SYSTEMS (0:1:0)")
    hn.add_argument("--http-client", choices=("lean", "aiohttp"), default="lean",
                    help="the load generator's HTTP client (default lean: httptools over asyncio, "
                         "~60 us per request; aiohttp to cross-check)")
    hn.add_argument("--max-lag-ms", type=float, default=5.0,
                    help="p99 harness lag (app start, step send) above which a system is not comparable")
    hn.add_argument("--max-cpu", type=float, default=0.7,
                    help="share of a core the load generator or a system's proxy may use (default 0.7)")
    p.add_argument("--concurrency", type=int, default=16, help="overhead benchmark: concurrent clients")
    p.add_argument("--requests", type=int, default=400,
                   help="overhead and plain benchmarks: requests per system (and concurrency)")
    p.add_argument("--plain-concurrency", default="8,16,32,64",
                   help="plain benchmark: closed-loop stream counts, comma-separated")
    p.add_argument("--gateway-workers", type=int, default=2,
                   help="overhead benchmark: also measure `serve --workers N` (1 = skip)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    names = []
    for w in args.workloads:
        names += ALL + list(SPECIAL) if w == "all" else [w]
    unknown = [w for w in names if w not in ALL and w not in SPECIAL]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(ALL)}, "
              f"{', '.join(SPECIAL)}, all", file=sys.stderr)
        return 2
    if args.systems is None:
        only_agents = [w for w in names if w not in SPECIAL] == ["agents"]
        args.systems = AGENT_SYSTEMS if only_agents else DEFAULT_SYSTEMS
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    from .systems import SYSTEMS
    from .variants import parse_variant, register

    known = list(SYSTEMS)
    for text in args.variant:
        try:
            variant = parse_variant(text, taken=known)
        except ValueError as e:
            print(str(e), file=sys.stderr)
            return 2
        register(variant)
        known.append(variant.name)
        if variant.name not in systems:
            systems.append(variant.name)
    bad = [s for s in systems if s not in known]
    if bad:
        print(f"unknown system(s): {', '.join(bad)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workloads = [w for w in dict.fromkeys(names) if w not in SPECIAL]
    if workloads:
        rc = _run_workloads(args, workloads, systems, out)
        if rc:
            return rc
    if "plain" in names:
        from .plain_load import run_plain_cli

        rc = run_plain_cli(args, out)
        if rc:
            return rc
    if "overhead" in names:
        from .overhead import run_overhead_cli

        return run_overhead_cli(args, out)
    return 0


def _config(args: argparse.Namespace, workloads: list[str], systems: list[str], out: Path) -> BenchConfig:
    from .affinity import plan_affinity
    from .metrics import Thresholds
    from .runner import BenchConfig

    quick = args.quick
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    if not loads or any(f <= 0 for f in loads):
        raise ValueError(f"--loads {args.loads!r}: positive fractions, comma-separated")
    cpus = tuple(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (0,)
    return BenchConfig(
        workloads=workloads, systems=systems, out=out, engines=args.engines,
        time_scale=1.0 if args.backend else args.time_scale, backends=args.backend, size=args.size,
        apps=args.apps, rates=_rates(args.rate), client_rtt_ms=args.client_rtt_ms, seed=args.seed,
        profile=args.profile, progress=not args.no_progress, sweep=args.sweep, loads=loads, load=args.load,
        point_apps=args.point_apps if args.point_apps is not None else (8 if quick else 30),
        point_seconds=args.point_seconds if args.point_seconds is not None else (0.0 if quick else 60.0),
        capacity_k=args.capacity_k,
        repeats=max(1, args.repeats),
        sweep_extend=args.sweep_extend if args.sweep_extend is not None else (0 if quick else 2),
        quick=quick, thresholds=Thresholds(args.max_lag_ms, args.max_cpu), slo_factor=args.slo_factor,
        affinity=plan_affinity(args.pin, cpus), http_client=args.http_client,
    )


def _run_workloads(args: argparse.Namespace, workloads: list[str], systems: list[str], out: Path) -> int:
    from rich.console import Console

    from .affinity import PinnedHarness
    from .charts import write_charts
    from .harness import run_async
    from .report import print_table
    from .runner import run_benchmark
    from .services import Services
    from .workloads import SWEEPABLE

    console = Console(stderr=True)
    try:
        cfg = _config(args, workloads, systems, out)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if cfg.sweep and (args.apps is not None or args.rate):
        print("--apps/--rate do not apply to --sweep: its rates are --loads x the baseline's capacity "
              "and its points have --point-apps apps", file=sys.stderr)
        return 2
    if cfg.sweep or cfg.load is not None:
        bad = [w for w in workloads if w not in SWEEPABLE]
        if bad:
            print(f"--sweep/--load: {', '.join(bad)} has a fixed timeline; sweepable: {', '.join(SWEEPABLE)}",
                  file=sys.stderr)
            return 2
    assert cfg.affinity is not None
    console.print(f"[bold]harness[/bold]: {cfg.affinity.note}")
    if cfg.time_scale != 1.0:
        console.print(f"[bold yellow]time-scale {cfg.time_scale:g}[/bold yellow]: CPU costs weigh "
                      f"{1 / cfg.time_scale:g}x more than on a GPU; for CI, not for comparison")
    with Services(out / "logs", cpus=cfg.affinity.services,
                  system_cpus=cfg.affinity.systems) as svc:
        if args.backend:
            svc.use_backends(args.backend)
        else:
            svc.start_engines(args.engines, args.profile, cfg.time_scale, args.seed)
            console.print(f"[bold yellow]SIMULATED ENGINES[/bold yellow]: {svc.long_label}")
        if any(s in systems for s in ("gateway", "gateway-plain")):
            svc.start_gateway()
        if "sglang-router" in systems and not svc.start_router():
            console.print(f"[yellow]{svc.router_note}[/yellow]")
        if any("-2r" in s for s in systems) and not svc.start_replicas(2):
            console.print(f"[yellow]{svc.replicas_note}[/yellow]")
        from .systems import PLAIN_VARIANTS, VARIANTS

        every = {**VARIANTS, **PLAIN_VARIANTS}
        svc.start_variants({s: every[s] for s in systems if s in every})
        svc.pin()
        time.sleep(1.0)  # let freshly started processes settle (imports, first health checks)
        with PinnedHarness(cfg.affinity):
            summary = run_async(run_benchmark(
                cfg, svc, log=lambda m: console.print(m, markup=False, highlight=False)))
    charts = write_charts(summary, out)
    print_table(summary, Console(width=max(150, Console().width)))
    console.print(f"wrote {out / 'summary.json'}, raw/*.json and {', '.join(p.name for p in charts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
