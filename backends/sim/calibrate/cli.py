"""``python -m backends.sim.calibrate``: measure (or refit a saved table), fit, write the report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
from collections.abc import Sequence
from typing import Any

from ..profiles import H100_LLAMA3_8B, CostProfile
from .fit import Fit, ModelShape, adjust, fit_profile, points_of, profile_snippet
from .harness import (
    CONFIGS,
    EAGER_NOTE,
    NOMINAL_PEAK,
    build_model,
    log_stderr,
    measure,
    model_shape,
    peak_flops_for,
)

DESCRIPTION = "Measure a GPU and fit a CostProfile to it (or refit a saved table without torch)."


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _report(fit: Fit, emitted: CostProfile) -> dict[str, Any]:
    return {
        "profile": dataclasses.asdict(emitted),
        "raw_profile": dataclasses.asdict(fit.profile),
        "coefficients": fit.coefficients,
        "crossover_tokens": fit.crossover_tokens,
        "rms_rel_error": fit.rms_rel_error,
        "max_abs_rel_error": fit.max_abs_rel_error,
        "warnings": fit.warnings,
        "points": fit.points,
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m backends.sim.calibrate", description=DESCRIPTION)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--dtype", default="bfloat16", help="torch dtype name (float32 for CPU runs)")
    ap.add_argument("--config", default="llama3-8b", choices=sorted(CONFIGS))
    ap.add_argument("--batches", default="1,8,32,64,128,200")
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--prefill", default="256,1024,4096,8192")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peak-flops", type=float, default=None,
                    help="device dense FLOP/s (default: datasheet value by device name)")
    ap.add_argument("--name", default=None,
                    help="profile name (default: <device>-<config>-calibrated)")
    ap.add_argument("--graph-overhead-s", type=float, default=None,
                    help="emit this step_overhead_s instead of the eager one (CUDA-graph estimate)")
    ap.add_argument("--kv-copy-factor", type=float, default=1.0,
                    help="divide the fitted KV term by this (3 undoes DynamicCache's concatenation)")
    ap.add_argument("--refit", default=None,
                    help="refit the table of an earlier JSON; no torch needed")
    ap.add_argument("--print-profile", action="store_true", help="print a CostProfile(...) snippet")
    return ap


def _refit_doc(args: argparse.Namespace) -> tuple[dict[str, Any], ModelShape, str]:
    """An earlier report's table, shape and profile name (``--refit``)."""
    with open(args.refit) as fh:
        doc = json.load(fh)
    shape = ModelShape(**doc["model"]["shape"])
    if args.peak_flops:
        shape = dataclasses.replace(shape, peak_flops=args.peak_flops)
    return doc, shape, args.name or doc["fit"]["profile"]["name"]


def _measured_doc(
    args: argparse.Namespace, argv: Sequence[str] | None
) -> tuple[dict[str, Any], ModelShape, str]:
    """Build the model, time the grid and record where the numbers come from."""
    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = args.peak_flops or peak_flops_for(device_name) or NOMINAL_PEAK
    log_stderr(f"building {args.config} ({args.dtype}) on {device_name}; {EAGER_NOTE}")
    model, cfg = build_model(args.config, device, args.dtype)
    shape = model_shape(model, cfg, peak)
    measured, skipped = measure(
        model, cfg, device, parse_ints(args.prefill), parse_ints(args.batches),
        parse_ints(args.contexts), args.warmup, args.repeats, log_stderr,
    )
    slug = device_name.lower().replace("nvidia", "").strip().split()[0] if device_name != "cpu" else "cpu"
    if args.peak_flops:
        peak_source = "flag"
    else:
        peak_source = "datasheet" if peak_flops_for(device_name) else "nominal (unknown device)"
    doc: dict[str, Any] = {
        "provenance": {
            "device": device_name,
            "device_arg": device,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "dtype": args.dtype,
            "config": args.config,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(
                [sys.executable, "-m", "backends.sim.calibrate", *(argv or sys.argv[1:])]
            ),
            "peak_flops_source": peak_source,
        },
        "notes": [EAGER_NOTE],
        "model": {
            "config": CONFIGS[args.config],
            "parameters": sum(p.numel() for p in model.parameters()),
            "shape": dataclasses.asdict(shape),
        },
        "measured": measured,
        "skipped": skipped,
    }
    if device.startswith("cuda"):
        doc["model"]["device_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return doc, shape, args.name or f"{slug}-{args.config}-calibrated"


def _base_profile(doc: dict[str, Any], shape: ModelShape) -> CostProfile:
    """The unfitted fields; the KV pool sized like SGLang's default (0.88 of memory less weights)."""
    total_mem = doc["model"].get("device_memory_bytes")
    if not total_mem:
        return H100_LLAMA3_8B
    tokens = int((total_mem * 0.88 - shape.weight_bytes) / shape.kv_bytes_per_token)
    return dataclasses.replace(H100_LLAMA3_8B, kv_capacity_tokens=tokens)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    doc, shape, name = _refit_doc(args) if args.refit else _measured_doc(args, argv)
    fit = fit_profile(points_of(doc["measured"]), shape, _base_profile(doc, shape), name)
    emitted = adjust(fit.profile, args.graph_overhead_s, args.kv_copy_factor)
    doc["fit"] = _report(fit, emitted)
    doc["fit"]["corrections"] = {
        "graph_overhead_s": args.graph_overhead_s,
        "kv_copy_factor": args.kv_copy_factor,
    }
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=2)

    log_stderr(
        f"fit over {len(fit.points)} points: rms error {fit.rms_rel_error:.1%}, "
        f"max {fit.max_abs_rel_error:.1%}; crossover {fit.crossover_tokens:.3g} tokens"
    )
    for w in fit.warnings:
        log_stderr(f"warning: {w}")
    log_stderr(f"wrote {args.out}")
    if args.print_profile:
        prov = doc.get("provenance", {})
        comment = (f"Fitted by backends.sim.calibrate on {prov.get('device', '?')} "
                   f"({prov.get('dtype', '?')}, {prov.get('date', '?')}).\n{EAGER_NOTE}")
        print(profile_snippet(emitted, comment))
    return 0
