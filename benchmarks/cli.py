"""`parrot-gateway bench WORKLOAD... [flags]`: start what is needed, run, report.

Example (CI-sized, simulated engines 20x faster than a real H100):

    parrot-gateway bench map-reduce chain --size small --time-scale 0.05 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from .workloads import SIZES, WORKLOADS

ALL = list(WORKLOADS)
DEFAULT_SYSTEMS = "baseline,gateway-plain,gateway,sglang-router"


def _rates(text: str | None) -> list[float | None]:
    if not text:
        return [None]
    return [float(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parrot-gateway bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="+", metavar="WORKLOAD",
                   help=f"{', '.join(ALL)}, overhead, or all")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help=f"comma-separated (default {DEFAULT_SYSTEMS}; "
                        "sglang-router skipped if smg is missing)")
    p.add_argument("--engines", type=int, default=2, help="simulated engines to start (default 2)")
    p.add_argument("--time-scale", type=float, default=0.1,
                   help="wall time per engine second of the simulated engines (default 0.1)")
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
    p.add_argument("--concurrency", type=int, default=16, help="overhead benchmark: concurrent clients")
    p.add_argument("--requests", type=int, default=400, help="overhead benchmark: requests per system")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    names = []
    for w in args.workloads:
        names += ALL + ["overhead"] if w == "all" else [w]
    unknown = [w for w in names if w not in ALL and w != "overhead"]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(ALL)}, overhead, all",
              file=sys.stderr)
        return 2
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    from .systems import SYSTEMS

    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        print(f"unknown system(s): {', '.join(bad)}; known: {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workloads = [w for w in dict.fromkeys(names) if w != "overhead"]
    if workloads:
        rc = _run_workloads(args, workloads, systems, out)
        if rc:
            return rc
    if "overhead" in names:
        from .overhead import run_overhead_cli

        return run_overhead_cli(args, out)
    return 0


def _run_workloads(args: argparse.Namespace, workloads: list[str], systems: list[str], out: Path) -> int:
    from rich.console import Console

    from .charts import write_charts
    from .report import print_table
    from .runner import BenchConfig, run_benchmark
    from .services import Services

    console = Console(stderr=True)
    time_scale = 1.0 if args.backend else args.time_scale
    cfg = BenchConfig(
        workloads=workloads, systems=systems, out=out, engines=args.engines, time_scale=time_scale,
        backends=args.backend, size=args.size, apps=args.apps, rates=_rates(args.rate),
        client_rtt_ms=args.client_rtt_ms, seed=args.seed, profile=args.profile,
        progress=not args.no_progress,
    )
    with Services(out / "logs") as svc:
        if args.backend:
            svc.use_backends(args.backend)
        else:
            svc.start_engines(args.engines, args.profile, time_scale, args.seed)
            console.print(f"[bold yellow]SIMULATED ENGINES[/bold yellow]: {svc.long_label}")
        if any(s in systems for s in ("gateway", "gateway-plain")):
            svc.start_gateway()
        if "sglang-router" in systems and not svc.start_router():
            console.print(f"[yellow]{svc.router_note}[/yellow]")
        time.sleep(1.0)  # let freshly started processes settle (imports, first health checks)
        summary = asyncio.run(run_benchmark(
            cfg, svc, log=lambda m: console.print(m, markup=False, highlight=False)))
    charts = write_charts(summary, out)
    print_table(summary, Console(width=max(150, Console().width)))
    console.print(f"wrote {out / 'summary.json'}, raw/*.json and {', '.join(p.name for p in charts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
