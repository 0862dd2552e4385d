"""The printed result table (rich)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def print_table(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"parrot-gateway bench - {summary.get('engine_label')} - client RTT "
                    f"{summary.get('client_rtt_ms', 0):g} ms - times in engine seconds")
    for col in ("workload", "system", "e2e mean", "e2e p50", "e2e p99", "req/s", "norm s/tok",
                "cached", "vs bound", "speedup"):
        t.add_column(col, justify="right" if col not in ("workload", "system") else "left")
    for name, w in summary["workloads"].items():
        for i, (s, m) in enumerate(w["systems"].items()):
            t.add_row(
                name if i == 0 else "", s, _f(m.get("e2e_mean_s")), _f(m.get("e2e_p50_s")),
                _f(m.get("e2e_p99_s")), _f(m.get("throughput_rps"), 2),
                _f(m.get("normalized_latency_s_per_token"), 4), _f(m.get("cached_token_ratio"), 2),
                _f((w.get("vs_bound") or {}).get(s), 2), _f((w.get("speedup_vs") or {}).get(s), 2),
            )
        t.add_row("", "[dim]bound[/dim]", _f(w.get("bound_s")), "", "", "", "", "", "1.00", "")
        t.add_section()
    console.print(t)
    for note in summary.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {note}")


SYSTEM_ORDER = ("baseline", "sglang-router", "gateway-plain", "gateway")


def markdown_table(summary: dict[str, Any]) -> str:
    """Mean app latency per system (engine seconds), the bound and the ratios, as Markdown."""
    systems = [s for s in SYSTEM_ORDER if any(s in w["systems"] for w in summary["workloads"].values())]
    head = ["workload", *systems, "bound", "baseline/gateway", "router/gateway", "gateway/bound",
            "cached (router / gateway)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: list[tuple[str, dict[str, Any], Any]] = []
    for name, w in summary["workloads"].items():
        if w.get("sweep"):
            rows += [(f"{name} @{rate}/s", v["systems"], v["speedup"]) for rate, v in w["sweep"].items()]
        else:
            rows.append((name, w["systems"], w.get("speedup")))
    for name, ms, speedup in rows:
        w = summary["workloads"][name.split(" @")[0]]
        gw = (ms.get("gateway") or {}).get("e2e_mean_s")
        router = (ms.get("sglang-router") or {}).get("e2e_mean_s")
        cached = " / ".join(_f((ms.get(s) or {}).get("cached_token_ratio"), 2)
                            for s in ("sglang-router", "gateway"))
        row = [name, *(_f((ms.get(s) or {}).get("e2e_mean_s")) for s in systems), _f(w.get("bound_s")),
               _f(speedup, 2) + "x",
               (_f(router / gw, 2) + "x") if router and gw else "-",
               _f(gw / w["bound_s"], 2) if gw and w.get("bound_s") else "-", cached]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def overhead_table(c1: dict[str, Any], c16: dict[str, Any]) -> str:
    """Added latency and throughput per proxy at concurrency 1 and 16, as Markdown."""
    labels = {"direct": "direct to the engine", "parrot-gateway": "parrot-gateway",
              "sglang-router": "SGLang Model Gateway (smg)", "litellm": "LiteLLM proxy"}
    procs = {"direct": "-", "parrot-gateway": "1 uvicorn worker + redis-server",
             "sglang-router": "1 process, Rust, threads = cores", "litellm": "1 uvicorn worker"}
    lines = ["| system | processes | c=1 p50 / p99 | c=1 added p50 | c=1 req/s "
             "| c=16 p50 / p99 | c=16 added p50 | c=16 req/s |", "|---|---|---|---|---|---|---|---|"]
    for name, label in labels.items():
        a, b = c1["systems"].get(name), c16["systems"].get(name)
        if a is None or b is None:
            continue
        lines.append(
            f"| {label} | {procs[name]} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} "
            f"| +{max(0.0, a['added_p50_ms']):.2f} | {a['rps']:.0f} | {b['p50_ms']:.1f} / "
            f"{b['p99_ms']:.1f} | +{max(0.0, b['added_p50_ms']):.1f} | {b['rps']:.0f} |"
        )
    return "\n".join(lines)


def policies_table(root: Path, policies: tuple[str, ...] = ("parrot", "round_robin", "least_loaded")) -> str:
    """Mean app latency (cached-token ratio) per workload and system, one column per policy."""
    runs = {p: json.loads((root / p / "summary.json").read_text()) for p in policies}
    first = runs[policies[0]]["workloads"]
    lines = ["| workload / system | " + " | ".join(policies) + " |", "|---" * (len(policies) + 1) + "|"]
    for w, entry in first.items():
        for system in entry["systems"]:
            cells = []
            for p in policies:
                m = runs[p]["workloads"][w]["systems"][system]
                cells.append(f"{m['e2e_mean_s']:.3f} ({_f(m.get('cached_token_ratio'), 2)})")
            lines.append(f"| {w} / {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BLOCK = re.compile(r"(<!-- bench:([\w.-]+) -->\n).*?(<!-- /bench -->)", re.S)


def fill_readme(text: str, results: Path) -> str:
    """Replace each ``<!-- bench:RUN -->...<!-- /bench -->`` block with RUN's table
    (``overhead``: the proxies table from ``overhead-c1`` and ``overhead``)."""

    def table(m: re.Match[str]) -> str:
        name = m.group(2)
        if name == "policies":
            body = policies_table(results / "policies")
        elif name == "overhead":
            c1 = json.loads((results / "overhead-c1" / "overhead.json").read_text())
            c16 = json.loads((results / "overhead" / "overhead.json").read_text())
            body = overhead_table(c1, c16)
        else:
            body = markdown_table(json.loads((results / name / "summary.json").read_text()))
        return f"{m.group(1)}{body}\n{m.group(3)}"

    return BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.report DIR...`: print each run's summary as a Markdown table;
    `python -m benchmarks.report --readme README.md RESULTS_DIR`: refill the README's tables."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--readme"]:
        readme, results = Path(args[1]), Path(args[2])
        readme.write_text(fill_readme(readme.read_text(), results))
        return 0
    for d in args:
        summary = json.loads((Path(d) / "summary.json").read_text())
        print(f"\n{d}: {summary.get('engine_label')}, client RTT {summary.get('client_rtt_ms', 0):g} ms\n")
        print(markdown_table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
