"""Measure a GPU and fit a :class:`CostProfile` to it.

``h100-llama3-8b`` was derived from datasheets because no GPU was at hand.
When one is, this tool times a randomly initialised Llama-shaped model (no
weights are downloaded: the model is built from a config) and fits the
profile fields that :func:`~backends.sim.cost_model.step_time` uses::

    python -m backends.sim.calibrate --out calib.json --device cuda \\
        --dtype bfloat16 --config llama3-8b --print-profile

It times (a) prefill forward passes of one prompt of each ``--prefill``
length and (b) decode steps: one new token for each of ``batch`` sequences
that already hold ``context`` tokens of KV cache, for every pair of
``--batches`` x ``--contexts``. Each point gets warm-up runs, then the median
of ``--repeats`` synchronised timings; points that run out of memory are
recorded as skipped. ``--refit calib.json`` fits a saved table again without
torch (e.g. on a CPU-only machine).

The fit (pure, :func:`fit_profile`) solves, by non-negative weighted least
squares on relative error, ``t = o + max(a, n*g) + c*pairs + k*kv + s*seqs``
(the cost model's form) for the step overhead ``o``, weight-streaming time
``a``, per-token GEMM time ``g``, prefill-attention time per pair ``c``, decode
KV time per token ``k`` and per-sequence cost ``s``; the max is resolved by
searching its crossover ``a/g`` in log space. Fields follow:
``mem_bandwidth = weight_bytes/a``, ``mfu = linear_flops_per_token/(g*peak)``,
``attn_efficiency = attn_flops_per_pair/(c*peak)``, ``kv_bytes_per_token =
k*mem_bandwidth`` (an *effective* figure: the cost model has one bandwidth).

Caveat: eager transformers is slower than SGLang (CUDA-graph replay, paged
FlashInfer/FA3 kernels, fused ops). Launch overhead lands in ``o``; the
DynamicCache concatenates each layer's whole cache every step, so ``k``
counts roughly read + write + read of the KV instead of one read. The fitted
profile is therefore an *upper bound* on SGLang step times.
``--graph-overhead-s`` replaces the fitted ``o`` in the emitted profile (the
raw fit stays in the JSON) for a CUDA-graph-like estimate; ``--kv-copy-factor``
divides ``k`` likewise (3 undoes the concatenation copy).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .cost_model import prefill_pairs, step_time
from .profiles import H100_LLAMA3_8B, CostProfile

EAGER_NOTE = (
    "Measured with eager transformers (no CUDA graphs, DynamicCache concatenation, "
    "no paged attention): slower than SGLang, so the fitted profile is an upper bound "
    "on SGLang step times."
)

# Dense bf16/fp16 tensor-core FLOP/s by device-name fragment (vendor datasheets).
# Only peak x mfu enters the cost model, so this just makes mfu readable.
_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10", 125e12),
    ("L4", 121e12),
)
_NOMINAL_PEAK = 1e12  # CPUs and unknown devices: mfu is then only relative.


# ---------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Point:
    """One measured step: a prefill of ``tokens`` (batch 1, no cache) or a
    decode step of ``batch`` sequences holding ``context`` KV tokens each."""

    kind: str  # "prefill" | "decode"
    tokens: int = 0
    batch: int = 0
    context: int = 0
    seconds: float = 0.0

    def cost_inputs(self) -> tuple[int, int, int, int]:
        """``step_time``'s prefill_tokens, prefill_context_tokens, decode_batch,
        resident_kv_tokens."""
        if self.kind == "prefill":
            return self.tokens, prefill_pairs(0, 0, self.tokens), 0, 0
        return 0, 0, self.batch, self.batch * self.context


@dataclass(frozen=True)
class ModelShape:
    """Constants fixed by the model and device, not fitted."""

    weight_bytes: float
    linear_flops_per_token: float
    attn_flops_per_pair: float
    kv_bytes_per_token: float
    peak_flops: float

    @classmethod
    def of(cls, p: CostProfile) -> ModelShape:
        return cls(
            p.weight_bytes,
            p.linear_flops_per_token,
            p.attn_flops_per_pair,
            p.kv_bytes_per_token,
            p.peak_flops,
        )


@dataclass
class Fit:
    """Result of :func:`fit_profile`."""

    profile: CostProfile
    coefficients: dict[str, float]
    """Seconds: overhead, weights, per_token_gemm, per_pair_attn, per_kv_token, per_seq."""
    crossover_tokens: float
    """Tokens per step at which the dense layers turn compute-bound (a/g)."""
    points: list[dict[str, Any]]
    """Each point with measured_s, model_s and rel_error (model/measured - 1)."""
    rms_rel_error: float
    max_abs_rel_error: float
    warnings: list[str] = field(default_factory=list)


def _design(points: Sequence[Point], crossover: float) -> np.ndarray:
    rows = []
    for pt in points:
        pre, pairs, batch, kv = pt.cost_inputs()
        n = pre + batch
        seqs = batch + (1 if pre > 0 else 0)
        rows.append([1.0, max(1.0, n / crossover), pairs, kv, seqs])
    return np.asarray(rows, dtype=float)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares; scipy's when installed, else a small active set."""
    try:
        from scipy.optimize import nnls  # type: ignore[import-untyped]

        return np.asarray(nnls(a, b)[0])
    except ImportError:
        pass
    free = list(range(a.shape[1]))
    x = np.zeros(a.shape[1])
    while free:
        sol = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        if (sol >= 0).all():
            x[:] = 0.0
            x[free] = sol
            return x
        free.pop(int(np.argmin(sol)))
    return x


def _solve(points: Sequence[Point], crossover: float) -> tuple[np.ndarray, float]:
    """Coefficients (o, a, c, k, s) minimising relative error, and that error's sum of squares."""
    a = _design(points, crossover)
    t = np.asarray([p.seconds for p in points])
    w = 1.0 / t
    aw = a * w[:, None]
    scale = np.linalg.norm(aw, axis=0)
    scale[scale == 0] = 1.0
    x = _nnls(aw / scale, np.ones_like(t)) / scale
    r = aw @ x - 1.0
    return x, float(r @ r)


def fit_profile(
    points: Sequence[Point],
    shape: ModelShape,
    base: CostProfile = H100_LLAMA3_8B,
    name: str = "calibrated",
) -> Fit:
    """Fit the cost model's free fields to measured ``points``; pure.

    Fields not fitted (capacity, running cap, chunk size) come from ``base``.
    Needs prefill points and decode points at several batches and contexts;
    the weights/GEMM split needs steps on both sides of the crossover.
    """
    points = [p for p in points if p.seconds > 0]
    if len(points) < 5:
        raise ValueError(f"need at least 5 measured points to fit 5 terms, got {len(points)}")
    sizes = [sum(p.cost_inputs()[0::2]) for p in points]
    lo, hi = math.log(min(sizes) / 4), math.log(max(sizes) * 4)
    grid = np.linspace(lo, hi, 161)
    errs = [_solve(points, math.exp(g))[1] for g in grid]
    i = int(np.argmin(errs))
    # Golden-section refinement between the neighbours of the best grid point.
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = right - phi * (right - left), left + phi * (right - left)
        if _solve(points, math.exp(m1))[1] <= _solve(points, math.exp(m2))[1]:
            right = m2
        else:
            left = m1
    crossover = math.exp((left + right) / 2)
    (o, a, c, k, s), _ = _solve(points, crossover)
    g = a / crossover

    warnings: list[str] = []
    if not min(sizes) <= crossover <= max(sizes):
        warnings.append(
            "weights/GEMM crossover not bracketed by the data: "
            "mem_bandwidth vs mfu split unreliable"
        )
    floor = 1e-15
    for label, value in (("weights", a), ("prefill attention", c), ("decode KV", k)):
        if value <= floor:
            warnings.append(f"{label} term fitted as zero; its field is a placeholder")
    coeffs = {
        "overhead_s": o,
        "weights_s": a,
        "per_token_gemm_s": g,
        "per_pair_attn_s": c,
        "per_kv_token_s": k,
        "per_seq_s": s,
    }
    a, g, c, k = (max(v, floor) for v in (a, g, c, k))
    bandwidth = shape.weight_bytes / a
    profile = dataclasses.replace(
        base,
        name=name,
        weight_bytes=shape.weight_bytes,
        mem_bandwidth=bandwidth,
        linear_flops_per_token=shape.linear_flops_per_token,
        attn_flops_per_pair=shape.attn_flops_per_pair,
        peak_flops=shape.peak_flops,
        mfu=shape.linear_flops_per_token / (g * shape.peak_flops),
        attn_efficiency=shape.attn_flops_per_pair / (c * shape.peak_flops),
        kv_bytes_per_token=k * bandwidth,
        step_overhead_s=o,
        per_seq_overhead_s=s,
    )
    rows, rel = [], []
    for pt in points:
        model = step_time(profile, *pt.cost_inputs())
        e = model / pt.seconds - 1.0
        rel.append(e)
        rows.append(
            {**dataclasses.asdict(pt), "measured_s": pt.seconds, "model_s": model, "rel_error": e}
        )
    arr = np.asarray(rel)
    return Fit(
        profile,
        coeffs,
        crossover,
        rows,
        float(np.sqrt(np.mean(arr**2))),
        float(np.max(np.abs(arr))),
        warnings,
    )


def adjust(
    profile: CostProfile, graph_overhead_s: float | None, kv_copy_factor: float
) -> CostProfile:
    """Optional eager-to-SGLang corrections (see module docstring); pure."""
    out = profile
    if graph_overhead_s is not None:
        out = dataclasses.replace(out, step_overhead_s=graph_overhead_s)
    if kv_copy_factor != 1.0:
        out = dataclasses.replace(out, kv_bytes_per_token=out.kv_bytes_per_token / kv_copy_factor)
    return out


def profile_snippet(profile: CostProfile, comment: str = "") -> str:
    """Python source of ``profile`` as a ``CostProfile(...)`` to paste into profiles.py."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"{profile.name.upper().replace('-', '_')} = CostProfile(")
    for f in dataclasses.fields(profile):
        v = getattr(profile, f.name)
        text = f"{v:.4e}" if isinstance(v, float) else repr(v)
        lines.append(f"    {f.name}={text},")
    lines.append(")")
    return "\n".join(lines)


def peak_flops_for(device_name: str) -> float | None:
    """Datasheet dense bf16 FLOP/s for a device name, None when unknown."""
    for fragment, flops in _PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return flops
    return None


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------- measuring (torch)


CONFIGS: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
    },
    # ~0.8 M parameters (~3 MB fp32): exercises the whole path on a CPU in seconds.
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 2048,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
    },
}


def build_model(config_name: str, device: str, dtype_name: str) -> tuple[Any, Any]:
    """Randomly initialised LlamaForCausalLM created directly on ``device`` (nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    cfg = LlamaConfig(**CONFIGS[config_name], attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return model, cfg


def model_shape(model: Any, cfg: Any, peak: float) -> ModelShape:
    """Byte and FLOP constants of the built model, by the conventions of profiles.py."""
    params = sum(p.numel() for p in model.parameters())
    elem = next(model.parameters()).element_size()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return ModelShape(
        weight_bytes=float(params * elem),
        linear_flops_per_token=2.0 * params,
        attn_flops_per_pair=4.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim,
        kv_bytes_per_token=float(
            cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2 * elem
        ),
        peak_flops=peak,
    )


class _Timer:
    """Median wall time of a callable after warm-ups, synchronising CUDA around each run."""

    def __init__(self, device: str, warmup: int, repeats: int) -> None:
        import torch

        self._sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.warmup, self.repeats = warmup, repeats

    def __call__(self, run: Callable[[], None]) -> tuple[float, list[float]]:
        for _ in range(self.warmup):
            run()
        samples = []
        for _ in range(self.repeats):
            self._sync()
            t0 = time.perf_counter()
            run()
            self._sync()
            samples.append(time.perf_counter() - t0)
        return float(np.median(samples)), samples


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _prefill_once(torch: Any, model: Any, ids: Any, keep: dict[str, int]) -> None:
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False, **keep)


def _decode_once(torch: Any, model: Any, inputs: dict[str, Any], cache: Any) -> None:
    with torch.inference_mode():
        model(**inputs)
    cache.crop(-1)  # back to ctx tokens; a negative crop works in transformers 4.x and 5.x


def measure(
    model: Any,
    cfg: Any,
    device: str,
    prefill: Sequence[int],
    batches: Sequence[int],
    contexts: Sequence[int],
    warmup: int,
    repeats: int,
    log: Callable[[str], None] = _log,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time the grid; returns (measured rows, skipped rows)."""
    import gc
    import inspect

    import torch
    from transformers import DynamicCache

    cuda = device.startswith("cuda")
    oom: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)
    timer = _Timer(device, warmup, repeats)
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    # Logits of the last prompt token only, as SGLang computes (older releases: num_logits_to_keep).
    keep = {k: 1 for k in ("logits_to_keep", "num_logits_to_keep") if k in params}
    keep = dict(list(keep.items())[:1])
    elem = next(model.parameters()).element_size()
    dtype = next(model.parameters()).dtype
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2 * elem
    measured: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def free() -> None:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()

    for n in prefill:
        row = {"kind": "prefill", "tokens": n, "batch": 1, "context": 0}
        try:
            ids = torch.randint(0, cfg.vocab_size, (1, n), device=device)
            med, samples = timer(partial(_prefill_once, torch, model, ids, keep))
            measured.append({**row, "seconds": med, "samples": samples})
            log(f"prefill {n:>6} tokens: {med * 1e3:9.2f} ms")
        except oom as e:
            skipped.append({**row, "reason": f"out of memory: {type(e).__name__}"})
            log(f"prefill {n:>6} tokens: skipped (OOM)")
        finally:
            ids = None
            free()

    for b in batches:
        for ctx in contexts:
            row = {"kind": "decode", "tokens": 0, "batch": b, "context": ctx}
            need = b * (ctx + warmup + repeats + 2) * kv_per_token * (1 + 1 / cfg.num_hidden_layers)
            if cuda and need > torch.cuda.mem_get_info()[0]:
                skipped.append(
                    {**row, "reason": f"KV cache needs {need / 2**30:.1f} GiB, more than free"}
                )
                log(f"decode batch {b:>4} x ctx {ctx:>6}: skipped (would not fit)")
                continue
            cache = None
            try:
                cache = DynamicCache()
                shape = (b, cfg.num_key_value_heads, ctx, head_dim)
                for layer in range(cfg.num_hidden_layers):
                    cache.update(
                        torch.zeros(shape, dtype=dtype, device=device),
                        torch.zeros(shape, dtype=dtype, device=device),
                        layer,
                    )
                inputs = {
                    "input_ids": torch.randint(0, cfg.vocab_size, (b, 1), device=device),
                    "position_ids": torch.full((b, 1), ctx, device=device),
                    "cache_position": torch.tensor([ctx], device=device),
                    "use_cache": True,
                    cache_kw: cache,
                }
                med, samples = timer(partial(_decode_once, torch, model, inputs, cache))
                measured.append({**row, "seconds": med, "samples": samples})
                log(f"decode batch {b:>4} x ctx {ctx:>6}: {med * 1e3:9.2f} ms")
            except oom as e:
                skipped.append({**row, "reason": f"out of memory: {type(e).__name__}"})
                log(f"decode batch {b:>4} x ctx {ctx:>6}: skipped (OOM)")
            finally:
                cache = None
                free()
    return measured, skipped


# ---------------------------------------------------------------- CLI


def _points(rows: Sequence[dict[str, Any]]) -> list[Point]:
    return [
        Point(r["kind"], r.get("tokens", 0), r.get("batch", 0), r.get("context", 0), r["seconds"])
        for r in rows
    ]


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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m backends.sim.calibrate", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--dtype", default="bfloat16", help="torch dtype name (float32 for CPU runs)")
    ap.add_argument("--config", default="llama3-8b", choices=sorted(CONFIGS))
    ap.add_argument("--batches", default="1,8,32,64,128,200")
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--prefill", default="256,1024,4096,8192")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="device dense FLOP/s (default: datasheet value by device name)",
    )
    ap.add_argument(
        "--name", default=None, help="profile name (default: <device>-<config>-calibrated)"
    )
    ap.add_argument(
        "--graph-overhead-s",
        type=float,
        default=None,
        help="emit this step_overhead_s instead of the eager one (CUDA-graph estimate)",
    )
    ap.add_argument(
        "--kv-copy-factor",
        type=float,
        default=1.0,
        help="divide the fitted KV term by this (3 undoes DynamicCache's concatenation)",
    )
    ap.add_argument(
        "--refit", default=None, help="refit the table of an earlier JSON; no torch needed"
    )
    ap.add_argument("--print-profile", action="store_true", help="print a CostProfile(...) snippet")
    args = ap.parse_args(argv)

    if args.refit:
        with open(args.refit) as fh:
            doc = json.load(fh)
        shape = ModelShape(**doc["model"]["shape"])
        if args.peak_flops:
            shape = dataclasses.replace(shape, peak_flops=args.peak_flops)
        name = args.name or doc["fit"]["profile"]["name"]
    else:
        import torch
        import transformers

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        device_name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        peak = args.peak_flops or peak_flops_for(device_name) or _NOMINAL_PEAK
        _log(f"building {args.config} ({args.dtype}) on {device_name}; {EAGER_NOTE}")
        model, cfg = build_model(args.config, device, args.dtype)
        shape = model_shape(model, cfg, peak)
        measured, skipped = measure(
            model,
            cfg,
            device,
            parse_ints(args.prefill),
            parse_ints(args.batches),
            parse_ints(args.contexts),
            args.warmup,
            args.repeats,
            _log,
        )
        slug = (
            device_name.lower().replace("nvidia", "").strip().split()[0]
            if device_name != "cpu"
            else "cpu"
        )
        name = args.name or f"{slug}-{args.config}-calibrated"
        doc = {
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
                "peak_flops_source": "flag"
                if args.peak_flops
                else ("datasheet" if peak_flops_for(device_name) else "nominal (unknown device)"),
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
            total = torch.cuda.get_device_properties(device).total_memory
            doc["model"]["device_memory_bytes"] = total

    base = H100_LLAMA3_8B
    total_mem = doc["model"].get("device_memory_bytes")
    if total_mem:  # SGLang's default pool: mem_fraction_static 0.88 less the weights
        base = dataclasses.replace(
            base,
            kv_capacity_tokens=int(
                (total_mem * 0.88 - shape.weight_bytes) / shape.kv_bytes_per_token
            ),
        )
    fit = fit_profile(_points(doc["measured"]), shape, base, name)
    emitted = adjust(fit.profile, args.graph_overhead_s, args.kv_copy_factor)
    doc["fit"] = _report(fit, emitted)
    doc["fit"]["corrections"] = {
        "graph_overhead_s": args.graph_overhead_s,
        "kv_copy_factor": args.kv_copy_factor,
    }
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=2)

    _log(
        f"fit over {len(fit.points)} points: rms error {fit.rms_rel_error:.1%}, "
        f"max {fit.max_abs_rel_error:.1%}; crossover {fit.crossover_tokens:.3g} tokens"
    )
    for w in fit.warnings:
        _log(f"warning: {w}")
    _log(f"wrote {args.out}")
    if args.print_profile:
        prov = doc.get("provenance", {})
        print(
            profile_snippet(
                emitted,
                (
                    f"Fitted by backends.sim.calibrate on {prov.get('device', '?')} "
                    f"({prov.get('dtype', '?')}, {prov.get('date', '?')}).\n{EAGER_NOTE}"
                ),
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
