"""PNG charts of a benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"baseline": "#7f7f7f", "gateway-plain": "#1f77b4", "sglang-router": "#ff7f0e", "gateway": "#2ca02c"}


def speedup_bars(summary: dict[str, Any], path: Path) -> Path:
    """Mean end-to-end latency of every system relative to the gateway, per workload."""
    names = list(summary["workloads"])
    systems = summary.get("systems_run") or ["baseline", "gateway"]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)), 4))
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        vals = [(summary["workloads"][n].get("speedup_vs") or {}).get(s) or 0 for n in names]
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, vals, width, label=s, color=COLORS.get(s))
        for b, v in zip(bars, vals):
            if v:
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("mean e2e latency / gateway's (x)")
    ax.set_title(f"Speedup of parrot-gateway (higher = gateway faster), "
                 f"client RTT {summary.get('client_rtt_ms', 0):g} ms\n"
                 f"{summary.get('engine_label', '')}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_vs_rate(summary: dict[str, Any], workload: str, path: Path) -> Path | None:
    """Mean e2e latency against app arrival rate, one line per system (rate sweeps only)."""
    sweep = summary["workloads"][workload].get("sweep")
    if not sweep:
        return None
    rates = sorted(sweep, key=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summary.get("systems_run") or []:
        ys = [(sweep[r]["systems"].get(s) or {}).get("e2e_mean_s") for r in rates]
        ax.plot([float(r) for r in rates], [y if y is not None else float("nan") for y in ys],
                marker="o", label=s, color=COLORS.get(s))
    ax.set_xlabel("app arrival rate (apps per engine-second)")
    ax.set_ylabel("mean e2e latency (engine s)")
    ax.set_title(f"{workload}: latency vs load\n{summary.get('engine_label', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timeline(raw: dict[str, Any], path: Path, time_scale: float) -> Path:
    """Gantt of the first app of a run, per system: one row per request, coloured by
    engine, spanning dispatch to completion (service-side times where the gateway
    reports them, else client send/receive)."""
    systems = list(raw["systems"])
    fig, axes = plt.subplots(len(systems), 1, figsize=(9, 2.2 + 1.6 * len(systems)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, s in zip(axes[:, 0], systems):
        apps = raw["systems"][s]
        if not apps:
            continue
        app = apps[0]
        reqs = sorted(app["requests"], key=lambda r: (r.get("started") or r["sent"]))
        engines = sorted({str(r.get("engine")) for r in reqs})
        t0 = app["start"]
        for i, r in enumerate(reqs):
            a = (r.get("started") or r["sent"]) - t0
            b = (r.get("finished") or r["received"]) - t0
            color = cmap(engines.index(str(r.get("engine"))) % 10)
            ax.barh(i, (b - a) / time_scale, left=a / time_scale, color=color, height=0.8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k % 10)) for k in range(len(engines))]
        labels = [e.replace("http://", "") if e != "None" else "engine not reported" for e in engines]
        ax.legend(handles, labels, fontsize=6, loc="lower right", title="engine", title_fontsize=6)
        ax.set_yticks(range(len(reqs)), [r["step"] for r in reqs], fontsize=5)
        ax.invert_yaxis()
        ax.set_title(f"{s}: e2e {(app['end'] - app['start']) / time_scale:.2f} engine-s", fontsize=8)
        ax.set_xlabel("engine seconds since app start", fontsize=7)
    fig.suptitle(f"{raw.get('workload')} timeline (first app), {raw.get('engines', '')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_charts(summary: dict[str, Any], out: Path) -> list[Path]:
    """Every chart the run supports; returns the files written."""
    made = [speedup_bars(summary, out / "speedup.png")]
    for name in summary["workloads"]:
        p = latency_vs_rate(summary, name, out / f"latency_vs_rate_{name}.png")
        if p:
            made.append(p)
    for raw_path in sorted((out / "raw").glob("map-reduce*.json"))[:1]:
        raw = json.loads(raw_path.read_text())
        made.append(timeline(raw, out / "timeline_map-reduce.png", summary.get("time_scale", 1.0)))
    return made
