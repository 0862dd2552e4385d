"""Time prefill and decode steps of a randomly initialised Llama-shaped model.

torch and transformers are imported inside the functions that need them, so the
fit and ``--refit`` run without them. The model is built from a config (no
weights are downloaded). Each point gets warm-up runs, then the median of
``repeats`` synchronised timings; points that run out of memory are recorded as
skipped.

Caveat: eager transformers is slower than SGLang (CUDA-graph replay, paged
FlashInfer/FA3 kernels, fused ops). Launch overhead lands in the fitted step
overhead; the DynamicCache concatenates each layer's whole cache every step, so
the KV term counts roughly read + write + read of the KV instead of one read. A
profile fitted to these timings is therefore an *upper bound* on SGLang step times.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from .fit import ModelShape

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
NOMINAL_PEAK = 1e12  # CPUs and unknown devices: mfu is then only relative.


def peak_flops_for(device_name: str) -> float | None:
    """Datasheet dense bf16 FLOP/s for a device name, None when unknown."""
    for fragment, flops in _PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return flops
    return None


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


def log_stderr(line: str) -> None:
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
    log: Callable[[str], None] = log_stderr,
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
