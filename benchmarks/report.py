"""The printed result table (rich)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .metrics import proxy_roles


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _lag(m: dict[str, Any]) -> str:
    h = m.get("harness") or {}
    vals = [v for v in (h.get("start_lag_p99_ms"), h.get("send_lag_p99_ms")) if v is not None]
    return f"{max(vals):.1f}" if vals else "-"


def _cpu(m: dict[str, Any], system: str) -> str:
    cpu = m.get("cpu") or {}
    if not cpu:
        return "-"
    roles = proxy_roles(system)
    proxy = " + ".join(f"{cpu.get(r, 0):.0%}" for r in roles) if roles else "-"
    return f"{cpu.get('harness', 0):.0%} / {proxy}"


def print_table(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    ts = summary.get("time_scale", 1.0)
    scale = "" if ts == 1.0 else f" - [bold red]time-scale {ts:g} (CI-sized, not for comparison)[/bold red]"
    t = Table(title=f"parrot-gateway bench - {summary.get('engine_label')} - client RTT "
                    f"{summary.get('client_rtt_ms', 0):g} ms - times in engine seconds{scale}")
    for col in ("workload", "system", "e2e mean", "e2e p50", "e2e p99", "req/s", "norm s/tok",
                "cached", "vs bound", "speedup", "lag p99 ms", "cpu harness / proxy", "comparable"):
        t.add_column(col, justify="right" if col not in ("workload", "system") else "left")
    for name, w in summary["workloads"].items():
        bad = w.get("not_comparable") or {}
        for i, (s, m) in enumerate(w["systems"].items()):
            t.add_row(
                name if i == 0 else "", s, _f(m.get("e2e_mean_s")), _f(m.get("e2e_p50_s")),
                _f(m.get("e2e_p99_s")), _f(m.get("throughput_rps"), 2),
                _f(m.get("normalized_latency_s_per_token"), 4), _f(m.get("cached_token_ratio"), 2),
                _f((w.get("vs_bound") or {}).get(s), 2), _f((w.get("speedup_vs") or {}).get(s), 2),
                _lag(m), _cpu(m, s), "[red]NO[/red]" if s in bad else "yes",
            )
        t.add_row("", "[dim]bound[/dim]", _f(w.get("bound_s")), "", "", "", "", "", "1.00", "")
        t.add_section()
    console.print(t)
    for name, w in summary["workloads"].items():
        if w.get("reference_load") is not None:
            console.print(f"{name}: the rows above are each system at {w['reference_load']:g}x the "
                          f"{w.get('reference_system')}'s capacity ({w.get('reference_rate')} apps/s)")
        if "capacity_apps_per_s" in w and "sweep" in w:
            console.print(saturation_table(name, w))
        chat = {s: (m.get("by_kind") or {}).get("chat") for s, m in w["systems"].items()}
        if any(c and c.get("ttft_p50_s") is not None for c in chat.values()):
            console.print(mixed_table(name, w))
    harness = summary.get("harness") or {}
    if harness.get("pinning"):
        console.print(f"[bold]harness:[/bold] {harness['pinning']['note']}; lag threshold "
                      f"{harness.get('max_lag_ms')} ms p99, CPU threshold {harness.get('max_cpu_share'):.0%} "
                      "of a core")
    for s, why in (summary.get("not_comparable") or {}).items():
        console.print(f"[bold red]NOT COMPARABLE[/bold red] {s}: {why}")
    for note in summary.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {note}")


def saturation_table(name: str, w: dict[str, Any]) -> Table:
    """Capacity, goodput and latency (mean / p99) at every swept rate, per system."""
    from .charts import sweep_points

    points = sweep_points(w)
    t = Table(title=f"{name}: saturation (apps per engine-second; latency mean / p99 in engine s; "
                    f"SLO {w.get('slo')})")
    t.add_column("system")
    t.add_column("capacity", justify="right")
    t.add_column("goodput", justify="right")
    for p in points:
        load = f" ({p['load']:g}x)" if p.get("load") is not None else ""
        t.add_column(f"{p['rate']:.2f}/s{load}" + (" ext" if p.get("extension") else ""), justify="right")
    bad = w.get("not_comparable") or {}
    for s in w["capacity_apps_per_s"]:
        cells = []
        for p in points:
            m = p["systems"].get(s)
            cells.append("-" if m is None else
                         f"{_f(m.get('e2e_mean_s'), 2)} / {_f(m.get('e2e_p99_s'), 2)}"
                         + ("" if (m.get("slo_ratio") or 9) <= 1 else " [red]x[/red]"))
        label = f"{s} [red](not comparable)[/red]" if s in bad else s
        good = (w.get("goodput_apps_per_s") or {}).get(s)
        t.add_row(label, _f(w["capacity_apps_per_s"].get(s), 2), _f(good, 2), *cells)
    return t


def mixed_table(name: str, w: dict[str, Any]) -> Table:
    """Chat tenant (TTFT, normalized latency) and batch tenants (JCT) per system."""
    t = Table(title=f"{name}: latency tenant (streamed chat) vs batch tenants (engine s)")
    for col in ("system", "chat TTFT p50", "chat TTFT p99", "chat s/token p50", "chat s/token p99",
                "batch JCT mean", "batch JCT p99"):
        t.add_column(col, justify="right" if col != "system" else "left")
    for s, m in w["systems"].items():
        c = (m.get("by_kind") or {}).get("chat") or {}
        bt = (m.get("by_kind") or {}).get("batch") or {}
        t.add_row(s, _f(c.get("ttft_p50_s"), 4), _f(c.get("ttft_p99_s"), 4),
                  _f(c.get("normalized_latency_p50_s_per_token"), 5),
                  _f(c.get("normalized_latency_p99_s_per_token"), 5),
                  _f(bt.get("jct_mean_s"), 3), _f(bt.get("jct_p99_s"), 3))
    return t


SYSTEM_ORDER = ("baseline", "sglang-router", "gateway-plain", "gateway")


def markdown_table(summary: dict[str, Any]) -> str:
    """Mean app latency per system (engine seconds), the bound and the ratios, as Markdown
    (a saturation run: capacity, goodput and the latency-vs-load curve instead; a run with
    chat and batch tenants: their objectives; a run of other systems: one row each)."""
    works = summary["workloads"].values()
    if any("capacity_apps_per_s" in w and "sweep" in w for w in works):
        return saturation_markdown(summary)
    if any(_has_chat_and_batch(w) for w in works):
        return mixed_markdown(summary)
    if any(set(w["systems"]) - set(SYSTEM_ORDER) for w in works):
        return systems_markdown(summary)
    from .charts import sweep_points

    systems = [s for s in SYSTEM_ORDER if any(s in w["systems"] for w in summary["workloads"].values())]
    head = ["workload", *systems, "bound", "baseline/gateway", "router/gateway", "gateway/bound",
            "cached (router / gateway)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows: list[tuple[str, dict[str, Any], Any]] = []
    for name, w in summary["workloads"].items():
        if isinstance(w.get("sweep"), dict):  # runs written before the SPEC's list shape
            rows += [(f"{name} @{rate}/s", v["systems"], v["speedup"]) for rate, v in w["sweep"].items()]
        elif w.get("sweep"):
            rows += [(f"{name} @{p['rate']:g}/s", p["systems"], p.get("speedup")) for p in sweep_points(w)]
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


def saturation_markdown(summary: dict[str, Any]) -> str:
    """Per workload and system: capacity, goodput at SLO and mean / p99 latency at each
    swept rate; systems marked not comparable say why below the table."""
    from .charts import sweep_points

    out = []
    for name, w in summary["workloads"].items():
        if "capacity_apps_per_s" not in w or "sweep" not in w:
            continue
        points = sweep_points(w)
        head = ["system", "capacity", "goodput"] + [
            f"{p['rate']:.2f}/s" + (f" ({p['load']:g}x)" if p.get("load") is not None else "")
            for p in points]
        lines = [f"**{name}** (apps per engine-second; latency mean / p99, engine s; SLO: {w.get('slo')}, "
                 f"{', '.join(f'{k} {v:g} s' for k, v in (w.get('slo_s') or {}).items())})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        bad = w.get("not_comparable") or {}
        repeats = max((len(m.get("repeats") or ()) for p in points for m in p["systems"].values()), default=0)
        if repeats > 1:
            lines[0] = lines[0][:-1] + f"; {repeats} runs per point, pooled; each run's mean in brackets)"
        run = w["capacity_apps_per_s"]
        for s in [x for x in SYSTEM_ORDER if x in run] + [x for x in run if x not in SYSTEM_ORDER]:
            cells = [_point_cell(p["systems"][s]) if s in p["systems"] else "-" for p in points]
            label = s + (" *" if s in bad else "")
            good = (w.get("goodput_apps_per_s") or {}).get(s)
            lines.append("| " + " | ".join([label, _f(w["capacity_apps_per_s"].get(s), 2), _f(good, 2),
                                             *cells]) + " |")
        lines += [f"\n\\* {s}: not comparable: {why}" for s, why in bad.items()]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _point_cell(m: dict[str, Any]) -> str:
    """``mean / p99``, and each repeat's own mean when the point was run more than once."""
    cell = f"{_f(m.get('e2e_mean_s'), 2)} / {_f(m.get('e2e_p99_s'), 2)}"
    runs = [r.get("e2e_mean_s") for r in m.get("repeats") or ()]
    if len(runs) > 1:
        cell += " (" + ", ".join(_f(x, 2) for x in runs) + ")"
    return cell


def _has_chat_and_batch(w: dict[str, Any]) -> bool:
    """A latency tenant of streamed chats (they have a TTFT) beside batch tenants."""
    return any({"chat", "batch"} <= set(m.get("by_kind") or {})
               and m["by_kind"]["chat"].get("ttft_p50_s") is not None for m in w["systems"].values())


def _load_note(w: dict[str, Any]) -> str:
    load, rate = w.get("offered_load"), w.get("rate")
    ref = next(iter(w.get("capacity_apps_per_s") or {}), "the reference system")
    return (f"{load:g} x {ref}'s capacity, " if isinstance(load, float) else "") + (
        f"{rate:.2f} apps/s" if isinstance(rate, float) else "")


def _not_comparable(w: dict[str, Any]) -> list[str]:
    return [f"\n\\* {s}: not comparable: {why}" for s, why in (w.get("not_comparable") or {}).items()]


def _system_tables(summary: dict[str, Any], head: list[str], row: Any, keep: Any = None) -> str:
    """One table per workload (kept by ``keep``): a row per system, cells from ``row(m)``;
    systems that were not comparable are starred and say why below."""
    out = []
    for name, w in summary["workloads"].items():
        if keep is not None and not keep(w):
            continue
        bad = w.get("not_comparable") or {}
        lines = [f"**{name}** ({_load_note(w)})", "", "| " + " | ".join(["system", *head]) + " |",
                 "|" + "---|" * (len(head) + 1)]
        lines += ["| " + " | ".join([s + (" *" if s in bad else ""), *row(m)]) + " |"
                  for s, m in w["systems"].items()]
        out.append("\n".join(lines + _not_comparable(w)))
    return "\n\n".join(out)


def mixed_markdown(summary: dict[str, Any]) -> str:
    """The latency tenant (streamed chats: TTFT, seconds per output token) against the batch
    tenants (job completion time), per system, in engine seconds."""

    def row(m: dict[str, Any]) -> list[str]:
        c, b = m["by_kind"].get("chat") or {}, m["by_kind"].get("batch") or {}
        return [f"{_f(c.get('ttft_p50_s'), 3)} / {_f(c.get('ttft_p99_s'), 3)}",
                f"{_f(c.get('normalized_latency_p50_s_per_token'), 4)} / "
                f"{_f(c.get('normalized_latency_p99_s_per_token'), 4)}",
                f"{_f(b.get('jct_mean_s'), 2)} / {_f(b.get('jct_p99_s'), 2)}",
                _f(m.get("cached_token_ratio"), 2)]

    head = ["chat TTFT p50 / p99 (s)", "chat s/token p50 / p99", "batch JCT mean / p99 (s)", "cached"]
    return _system_tables(summary, head, row, _has_chat_and_batch)


def systems_markdown(summary: dict[str, Any]) -> str:
    """One row per system of a single-load run (policy switches, replicas, unmodified
    clients): mean / p50 / p99 app latency in engine seconds, cached share, engine busy."""

    def row(m: dict[str, Any]) -> list[str]:
        return [_f(m.get("e2e_mean_s")), _f(m.get("e2e_p50_s")), _f(m.get("e2e_p99_s")),
                _f(m.get("cached_token_ratio"), 2), _f(m.get("engine_utilization"), 2),
                _f(m.get("throughput_apps_per_s"), 2)]

    return _system_tables(summary, ["mean", "p50", "p99", "cached", "engines busy", "apps/s"], row)


def plain_markdown(result: dict[str, Any]) -> str:
    """Closed-loop plain streams: TTFT, inter-token latency, end-to-end latency and
    throughput per system and concurrency (wall ms at time-scale 1)."""
    lines = ["| streams | system | TTFT p50 / p95 (ms) | ITL mean (ms) | e2e mean (ms) | req/s | errors |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['concurrency']} | {r['system']} "
                     f"| {_f(r['ttft_p50_ms'], 1)} / {_f(r['ttft_p95_ms'], 1)} | {_f(r['itl_mean_ms'], 2)} "
                     f"| {_f(r['e2e_mean_ms'], 0)} | {_f(r['throughput_rps'], 2)} | {r['errors']} |")
    return "\n".join(lines)


def overhead_table(c1: dict[str, Any], c16: dict[str, Any]) -> str:
    """Added latency, throughput and proxy CPU per request (the proxy process; for the
    gateway, + its redis-server) at concurrency 1 and 16, as Markdown."""
    labels = {"direct": "direct to the engine", "parrot-gateway": "parrot-gateway",
              "parrot-gateway-2w": "parrot-gateway `--workers 2`",
              "sglang-router": "SGLang Model Gateway (smg)", "litellm": "LiteLLM proxy"}
    procs = {"direct": "-", "parrot-gateway": "1 uvicorn worker + redis-server",
             "parrot-gateway-2w": "2 uvicorn workers + redis-server",
             "sglang-router": "1 process, Rust, threads = cores", "litellm": "1 uvicorn worker"}
    lines = ["| system | processes | c=1 p50 / p99 | c=1 added p50 | c=1 req/s | c=16 p50 / p99 "
             "| c=16 added p50 | c=16 req/s | CPU ms/req c=1 / c=16 |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cpu(m: dict[str, Any]) -> str:
        proxy = m.get("cpu_ms_per_request")
        if proxy is None:
            return "-"
        redis = m.get("redis_cpu_ms_per_request")
        return f"{proxy:.2f}" + (f" + {redis:.2f}" if redis is not None else "")

    for name, label in labels.items():
        a, b = c1["systems"].get(name), c16["systems"].get(name)
        if a is None or b is None:
            continue
        lines.append(
            f"| {label} | {procs[name]} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} "
            f"| +{max(0.0, a['added_p50_ms']):.2f} | {a['rps']:.0f} | {b['p50_ms']:.1f} / "
            f"{b['p99_ms']:.1f} | +{max(0.0, b['added_p50_ms']):.1f} | {b['rps']:.0f} | {cpu(a)} / {cpu(b)} |"
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
        elif name == "plain":
            body = plain_markdown(json.loads((results / "plain" / "plain.json").read_text()))
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
