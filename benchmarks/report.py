"""The printed result table (rich)."""

from __future__ import annotations

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
