"""Fit a :class:`CostProfile` to a table of measured step times. Pure: numpy, no torch.

The fit (:func:`fit_profile`) solves, by non-negative weighted least squares on
relative error, ``t = o + max(a, n*g) + c*pairs + k*kv + s*seqs`` (the form of
:func:`~backends.sim.cost_model.step_time`) for the step overhead ``o``,
weight-streaming time ``a``, per-token GEMM time ``g``, prefill-attention time per
pair ``c``, decode KV time per token ``k`` and per-sequence cost ``s``; the max is
resolved by searching its crossover ``a/g`` in log space. Fields follow:
``mem_bandwidth = weight_bytes/a``, ``mfu = linear_flops_per_token/(g*peak)``,
``attn_efficiency = attn_flops_per_pair/(c*peak)``, ``kv_bytes_per_token =
k*mem_bandwidth`` (an *effective* figure: the cost model has one bandwidth).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cost_model import prefill_pairs, step_time
from ..profiles import H100_LLAMA3_8B, CostProfile


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


def points_of(rows: Sequence[dict[str, Any]]) -> list[Point]:
    """The :class:`Point` of each measured row of a calibration JSON."""
    return [
        Point(r["kind"], r.get("tokens", 0), r.get("batch", 0), r.get("context", 0), r["seconds"])
        for r in rows
    ]
