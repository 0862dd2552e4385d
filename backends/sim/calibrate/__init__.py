"""Measure a GPU and fit a :class:`~backends.sim.profiles.CostProfile` to it.

``h100-llama3-8b`` was derived from datasheets because no GPU was at hand.
When one is, this tool times a randomly initialised Llama-shaped model (no
weights are downloaded: the model is built from a config) and fits the
profile fields that :func:`~backends.sim.cost_model.step_time` uses::

    python -m backends.sim.calibrate --out calib.json --device cuda \\
        --dtype bfloat16 --config llama3-8b --print-profile

It times (a) prefill forward passes of one prompt of each ``--prefill``
length and (b) decode steps: one new token for each of ``batch`` sequences
that already hold ``context`` tokens of KV cache, for every pair of
``--batches`` x ``--contexts``. ``--refit calib.json`` fits a saved table
again without torch (e.g. on a CPU-only machine).

Eager transformers is slower than SGLang, so the fitted profile is an upper
bound on SGLang step times (see ``harness``). ``--graph-overhead-s`` replaces
the fitted step overhead in the emitted profile (the raw fit stays in the JSON)
for a CUDA-graph-like estimate; ``--kv-copy-factor`` divides the KV term
likewise (3 undoes the DynamicCache concatenation copy).

Modules: ``fit`` (pure least squares over a measured table), ``harness`` (the
torch timing, imported lazily), ``cli`` (flags, provenance, the JSON report).
"""

from __future__ import annotations

from .cli import main
from .fit import Fit, ModelShape, Point, adjust, fit_profile, points_of, profile_snippet

__all__ = [
    "Fit", "ModelShape", "Point", "adjust", "fit_profile", "main", "points_of", "profile_snippet",
]
