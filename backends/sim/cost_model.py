"""Time of one forward pass (one engine step) from what the batch contains.

A roofline: dense layers cost the larger of streaming the weights once and
doing the GEMM FLOPs (decode at small batch is memory-bound, prefill and big
decode batches compute-bound); attention adds FLOPs for prefill pairs and a
KV read for every context token a decoding sequence attends to. Pure.
"""

from __future__ import annotations

from .profiles import CostProfile


def step_time(
    profile: CostProfile,
    prefill_tokens: int,
    prefill_context_tokens: int,
    decode_batch: int,
    resident_kv_tokens: int,
) -> float:
    """Seconds for one forward pass.

    ``prefill_tokens``: new (uncached) tokens run through the model this step.
    ``prefill_context_tokens``: attention pairs of those tokens, i.e. the sum
    over each prefilled token of how many tokens it attends to (cached prefix
    plus earlier tokens of its own chunk).
    ``decode_batch``: sequences producing one token each this step.
    ``resident_kv_tokens``: KV tokens the decode batch reads (the sum of the
    decoding sequences' lengths).
    """
    if prefill_tokens <= 0 and decode_batch <= 0:
        return 0.0
    p = profile
    tokens = max(prefill_tokens, 0) + max(decode_batch, 0)
    weights_s = p.weight_bytes / p.mem_bandwidth
    gemm_s = tokens * p.linear_flops_per_token / (p.peak_flops * p.mfu)
    attn_prefill_s = max(prefill_context_tokens, 0) * p.attn_flops_per_pair / (
        p.peak_flops * p.attn_efficiency
    )
    attn_decode_s = max(resident_kv_tokens, 0) * p.kv_bytes_per_token / p.mem_bandwidth
    return (
        p.step_overhead_s
        + max(weights_s, gemm_s)
        + attn_prefill_s
        + attn_decode_s
        + (max(decode_batch, 0) + (1 if prefill_tokens > 0 else 0)) * p.per_seq_overhead_s
    )


def prefill_pairs(cached: int, start: int, count: int) -> int:
    """Attention pairs of prefilling tokens ``start .. start+count`` of a prompt
    whose first ``cached`` tokens came from the cache (positions are absolute)."""
    first = cached + start + 1
    last = cached + start + count
    return (first + last) * count // 2
