"""Named cost profiles for the simulated engine.

No GPU was available when these were set, so every constant is derived from
published hardware and model figures rather than measured; each field says
where its number comes from. ``h100-llama3-8b`` models Llama-3(.1)-8B in bf16
on one H100 SXM 80 GB under SGLang defaults:

* weights: 8.03 B parameters x 2 bytes = 16.06 GB (Meta model card);
* HBM3 bandwidth 3.35 TB/s, dense bf16 989 TFLOP/s (NVIDIA H100 datasheet);
* linear layers cost 2 FLOP per parameter per token = 16 GFLOP/token;
* attention 4 x layers x hidden FLOP per (query token, context token) pair:
  QK^T and PV, 2 FLOP each, 32 layers, 32 x 128 = 4096 wide;
* KV cache 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes = 128 KiB/token;
* KV pool: SGLang's default ``mem_fraction_static`` 0.88 of 80 GB, less the
  weights, divided by 128 KiB -> ~414k tokens.

Checks against published results (see tests/test_sim_cost_model.py):
batch-1 decode step 5.7 ms (16 GB / 3.35 TB/s = 4.8 ms is the floor; NVIDIA
NIM publishes 4.6 ms ITL at concurrency 1, with FP8 weights), ~12.5 ms at 200
sequences of ~512 context tokens, prefill of 2k tokens ~30k tokens/s.

Recalibrating on a GPU: on a machine with torch and transformers (no weights
or internet needed; the model is randomly initialised from its config), run
``python -m backends.sim.calibrate --out calib.json --device cuda --dtype
bfloat16 --config llama3-8b --print-profile``. It times prefill passes and
decode steps over a grid (``--prefill``, ``--batches``, ``--contexts``; OOM
points are skipped), fits ``mem_bandwidth``, ``mfu``, ``attn_efficiency``,
``kv_bytes_per_token`` (effective), ``step_overhead_s`` and
``per_seq_overhead_s`` by least squares, writes provenance, the raw table and
per-point fit errors to the JSON, and prints a ``CostProfile(...)`` to paste
here. It measures eager transformers, which is slower than SGLang (no CUDA
graphs, DynamicCache copies the KV each step), so the fit is an upper bound;
``--graph-overhead-s`` and ``--kv-copy-factor`` apply documented corrections,
and ``--refit calib.json`` refits a saved table without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostProfile:
    """Hardware x model constants the cost model turns into step times."""

    name: str
    weight_bytes: float
    """Bytes of weights streamed from HBM once per forward pass."""
    mem_bandwidth: float
    """Achievable HBM bytes/s (peak x efficiency)."""
    linear_flops_per_token: float
    """FLOP per token through the dense layers (2 x parameters)."""
    attn_flops_per_pair: float
    """FLOP per (query token, context token) pair, all layers."""
    peak_flops: float
    """Dense bf16 FLOP/s of the device."""
    mfu: float
    """Fraction of peak FLOP/s reached by large GEMMs (prefill, big decode batches)."""
    attn_efficiency: float
    """Fraction of peak reached by the prefill attention kernel."""
    kv_bytes_per_token: float
    """KV-cache bytes per token; decode reads every context token's KV once per step."""
    step_overhead_s: float
    """Fixed per-forward cost: kernel launches / CUDA-graph replay, scheduler, sampling."""
    per_seq_overhead_s: float
    """Per-sequence CPU cost per step (batch bookkeeping, detokenize, stream)."""
    kv_capacity_tokens: int
    """Tokens the KV pool holds beside the weights."""
    max_running_requests: int
    """SGLang's default cap on concurrently running requests for this pool size."""
    chunked_prefill_size: int
    """Max prefill tokens per forward pass (SGLang ``--chunked-prefill-size``)."""


_H100_BW = 3.35e12  # H100 SXM HBM3, NVIDIA datasheet
_H100_BF16 = 989e12  # H100 SXM dense bf16 tensor core, NVIDIA datasheet
_LLAMA3_8B_WEIGHTS = 8.03e9 * 2  # bf16
_LLAMA3_8B_KV = 32 * 8 * 128 * 2 * 2  # layers x kv heads x head dim x (K,V) x bf16 = 131072

H100_LLAMA3_8B = CostProfile(
    name="h100-llama3-8b",
    weight_bytes=_LLAMA3_8B_WEIGHTS,
    # ~90% of peak is what well-tuned decode kernels stream (memory-bound GEMV).
    mem_bandwidth=_H100_BW * 0.9,
    linear_flops_per_token=2 * 8.03e9,
    attn_flops_per_pair=4 * 32 * 4096,
    peak_flops=_H100_BF16,
    # ~50% MFU: typical for bf16 prefill of an 8B model on H100.
    mfu=0.5,
    attn_efficiency=0.4,
    kv_bytes_per_token=_LLAMA3_8B_KV,
    step_overhead_s=0.3e-3,
    per_seq_overhead_s=5e-6,
    kv_capacity_tokens=int((80e9 * 0.88 - _LLAMA3_8B_WEIGHTS) / _LLAMA3_8B_KV),
    # SGLang derives its running cap from the pool; a few hundred to ~1k on H100.
    max_running_requests=256,
    chunked_prefill_size=8192,
)

INSTANT = CostProfile(
    name="instant",
    weight_bytes=0.0,
    mem_bandwidth=1e18,
    linear_flops_per_token=0.0,
    attn_flops_per_pair=0.0,
    peak_flops=1e18,
    mfu=1.0,
    attn_efficiency=1.0,
    kv_bytes_per_token=0.0,
    # A microsecond per step: lets overhead benchmarks measure the gateway, not the engine.
    step_overhead_s=1e-6,
    per_seq_overhead_s=0.0,
    kv_capacity_tokens=1_000_000,
    max_running_requests=1024,
    chunked_prefill_size=1 << 20,
)

PROFILES: dict[str, CostProfile] = {p.name: p for p in (H100_LLAMA3_8B, INSTANT)}
DEFAULT_PROFILE = H100_LLAMA3_8B.name


def get_profile(name: str) -> CostProfile:
    """The profile called ``name``; ValueError listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
