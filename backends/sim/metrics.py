"""What the simulated engine reports about itself: load, model and server info, Prometheus text.

Shapes follow SGLang's ``/get_load``, ``/get_model_info``, ``/get_server_info`` and
``sglang:*`` metrics; every report says ``simulated``.
"""

from __future__ import annotations

from typing import Any

from .config import CONTEXT_LENGTH
from .service import SimService


def hit_rate(svc: SimService) -> float:
    s = svc.engine.stats
    return round(s.cached_tokens / s.prompt_tokens, 6) if s.prompt_tokens else 0.0


def load(svc: SimService) -> dict[str, Any]:
    e, cap = svc.engine, svc.engine_config.kv_capacity_tokens
    waiting_tokens = sum(len(r.req.input_ids) for r in e.waiting)
    return {
        "dp_rank": 0,
        "num_reqs": len(e.running) + len(e.waiting),
        "num_running_reqs": len(e.running),
        "num_waiting_reqs": len(e.waiting),
        "num_tokens": e.used_tokens - e.cache.evictable_tokens + waiting_tokens,
        "num_used_tokens": e.used_tokens,
        "max_total_num_tokens": cap,
        "token_usage": round(e.used_tokens / cap, 6),
        "cache_hit_rate": hit_rate(svc),
    }


def model_info(svc: SimService) -> dict[str, Any]:
    return {
        "model_path": svc.model_path,
        "tokenizer_path": svc.model_path,
        "served_model_name": svc.config.model,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "simulated": True,
    }


def server_info(svc: SimService) -> dict[str, Any]:
    ec, cfg = svc.engine_config, svc.config
    return {
        "model_path": svc.model_path,
        "tokenizer_path": svc.model_path,
        "served_model_name": cfg.model,
        "host": cfg.host,
        "port": cfg.port,
        "tp_size": 1,
        "dp_size": 1,
        "page_size": 1,
        "max_running_requests": ec.max_running_requests,
        "max_total_num_tokens": ec.kv_capacity_tokens,
        "chunked_prefill_size": ec.chunked_prefill_size,
        "context_length": CONTEXT_LENGTH,
        "enable_priority_scheduling": True,
        "schedule_low_priority_values_first": False,
        "schedule_policy": "fcfs",
        "disable_radix_cache": False,
        "disaggregation_mode": "null",
        "random_seed": cfg.seed,
        "version": "sim",
        "simulated": True,
        "sim_profile": ec.profile.name,
        "sim_time_scale": cfg.time_scale,
        "sim_eos_after": list(cfg.eos_after),
        "internal_states": [{
            "max_total_num_tokens": ec.kv_capacity_tokens,
            "max_running_requests": ec.max_running_requests,
            "last_gen_throughput": 0.0,
            **load(svc),
        }],
    }


def prometheus_text(svc: SimService) -> str:
    """SGLang's ``sglang:*`` gauges and counters (plus ``sim:*``), text exposition format."""
    e, s, cap = svc.engine, svc.engine.stats, svc.engine_config.kv_capacity_tokens
    labels = f'{{model_name="{svc.config.model}"}}'
    rows = [
        ("sglang:num_running_reqs", "gauge", "Running requests.", len(e.running)),
        ("sglang:num_queue_reqs", "gauge", "Waiting requests.", len(e.waiting)),
        ("sglang:num_used_tokens", "gauge", "KV tokens in use.", e.used_tokens),
        ("sglang:max_total_num_tokens", "gauge", "KV pool size in tokens.", cap),
        ("sglang:token_usage", "gauge", "KV pool fraction in use.", e.used_tokens / cap),
        ("sglang:cache_hit_rate", "gauge", "Prefix-cache hit rate (prompt tokens).", hit_rate(svc)),
        ("sglang:prompt_tokens_total", "counter", "Prompt tokens.", s.prompt_tokens),
        ("sglang:cached_tokens_total", "counter", "Prompt tokens from cache.", s.cached_tokens),
        ("sglang:generation_tokens_total", "counter", "Generated tokens.", s.generation_tokens),
        ("sglang:num_requests_total", "counter", "Requests received.", svc.requests_total),
        ("sglang:num_aborted_requests_total", "counter", "Aborted requests.", s.aborted),
        ("sim:busy_seconds_total", "counter", "Simulated GPU busy time (unscaled).",
         svc.runner.busy_virtual_s),
        ("sim:steps_total", "counter", "Forward passes.", svc.runner.steps),
    ]
    out = []
    for name, kind, help_, value in rows:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    return "\n".join(out) + "\n"
