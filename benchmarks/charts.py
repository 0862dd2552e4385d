"""PNG charts of a benchmark run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

COLORS = {"baseline": "#7f7f7f", "gateway-plain": "#1f77b4", "sglang-router": "#ff7f0e", "gateway": "#2ca02c",
          "gateway-2r": "#98df8a", "gateway-plain-2r": "#aec7e8", "gateway-fifo": "#d62728",
          "gateway-nogroups": "#9467bd", "gateway-nowindow": "#8c564b", "gateway-noadmission": "#e377c2",
          "gateway-nogate": "#bcbd22", "gateway-window": "#c49c94",
          "gateway-2r-session": "#17becf"}


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


def sweep_points(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A workload's ``sweep`` as the SPEC list ``[{rate, systems}]``, sorted by rate (runs
    written before the SPEC fixed that shape keyed it by the rate as a string)."""
    sweep = entry.get("sweep") or []
    if isinstance(sweep, dict):
        sweep = [{"rate": float(r), **v} for r, v in sweep.items()]
    return sorted(sweep, key=lambda p: float(p["rate"]))


def _label(summary: dict[str, Any], workload: str, system: str) -> str:
    bad = (summary["workloads"][workload].get("not_comparable") or {}).get(system)
    return f"{system} (not comparable)" if bad else system


def latency_vs_rate(summary: dict[str, Any], workload: str, path: Path) -> Path | None:
    """Mean e2e latency against app arrival rate, one line per system (``--rate`` lists)."""
    points = sweep_points(summary["workloads"][workload])
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summary.get("systems_run") or []:
        ys = [(p["systems"].get(s) or {}).get("e2e_mean_s") for p in points]
        ax.plot([float(p["rate"]) for p in points], [y if y is not None else float("nan") for y in ys],
                marker="o", label=_label(summary, workload, s), color=COLORS.get(s))
    ax.set_xlabel("app arrival rate (apps per engine-second)")
    ax.set_ylabel("mean e2e latency (engine s)")
    ax.set_title(f"{workload}: latency vs load\n{summary.get('engine_label', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_vs_load(summary: dict[str, Any], workload: str, path: Path) -> Path | None:
    """Saturation sweep: mean and p99 app latency against offered load, every system on
    one plot, with the SLO (when the workload has one app kind) and the baseline's capacity."""
    entry = summary["workloads"][workload]
    points = sweep_points(entry)
    if not points or "capacity_apps_per_s" not in entry:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    ref = entry.get("reference_system", "baseline")
    base = (entry["capacity_apps_per_s"] or {}).get(ref)
    slo = entry.get("slo_s") or {}
    for ax, key, what in ((axes[0], "e2e_mean_s", "mean"), (axes[1], "e2e_p99_s", "p99")):
        for s in summary.get("systems_run") or []:
            xs = [float(p["rate"]) for p in points if s in p["systems"]]
            ys = [p["systems"][s].get(key) for p in points if s in p["systems"]]
            ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker="o",
                    label=_label(summary, workload, s), color=COLORS.get(s))
        if len(slo) == 1:
            ax.axhline(next(iter(slo.values())), color="red", lw=0.8, ls="--", label="SLO (p90)")
        if base:
            ax.axvline(base, color="black", lw=0.8, ls=":", label=f"{ref} capacity")
        ax.set_xlabel("offered load (apps per engine-second)")
        ax.set_ylabel(f"{what} app latency (engine s)")
        lo, hi = ax.get_ylim()
        if lo > 0 and hi / lo > 10:  # latency past the knee grows without bound: log scale
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(f"{workload}: {what} latency vs load", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{summary.get('engine_label', '')}, client RTT {summary.get('client_rtt_ms', 0):g} ms",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def goodput_bars(summary: dict[str, Any], path: Path) -> Path | None:
    """Goodput at SLO per workload and system (bars), capacity as a marker above each."""
    names = [n for n, w in summary["workloads"].items() if "goodput_apps_per_s" in w]
    if not names:
        return None
    systems = summary.get("systems_run") or []
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(names)), 4.3))
    width = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(names))]
        good = [summary["workloads"][n]["goodput_apps_per_s"].get(s) or 0.0 for n in names]
        cap = [summary["workloads"][n]["capacity_apps_per_s"].get(s) for n in names]
        bars = ax.bar(xs, good, width, label=s, color=COLORS.get(s))
        ax.scatter(xs, [c if c is not None else float("nan") for c in cap], marker="_", s=200,
                   color="black", zorder=3)
        for b, v, n in zip(bars, good, names):
            note = (summary["workloads"][n].get("goodput_note") or {}).get(s, "")
            txt = ("≥" if note.startswith("met at every") else "") + f"{v:.2f}"
            if (summary["workloads"][n].get("not_comparable") or {}).get(s):
                txt += "*"
            ax.text(b.get_x() + b.get_width() / 2, v, txt, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("apps per engine-second")
    ax.set_title("Goodput at SLO (bars) and closed-loop capacity (—)\n≥: SLO met at every rate swept; "
                 f"*: not comparable\n{summary.get('engine_label', '')}", fontsize=7)
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
        p = (latency_vs_load(summary, name, out / f"latency_vs_load_{name}.png")
             or latency_vs_rate(summary, name, out / f"latency_vs_rate_{name}.png"))
        if p:
            made.append(p)
    g = goodput_bars(summary, out / "goodput.png")
    if g:
        made.append(g)
    raws = [p for p in sorted((out / "raw").glob("map-reduce*.json")) if "-capacity-" not in p.name]
    for raw_path in raws[:1]:
        raw = json.loads(raw_path.read_text())
        made.append(timeline(raw, out / "timeline_map-reduce.png", summary.get("time_scale", 1.0)))
    return made
