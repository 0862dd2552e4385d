"""Settings of one simulated engine (``SimConfig``) and the constants it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .engine import EngineConfig
from .profiles import DEFAULT_PROFILE, get_profile
from .textgen import EOS_AFTER

BANNER = "SIMULATED ENGINE: a software stand-in for one GPU running SGLang (no model, no GPU)"
CONTEXT_LENGTH = 131072  # Llama-3.1-8B's context window


@dataclass
class SimConfig:
    """Settings of one simulated engine; ``None`` means the profile's default."""

    profile: str = DEFAULT_PROFILE
    time_scale: float = 1.0
    max_running_requests: int | None = None
    kv_capacity_tokens: int | None = None
    chunked_prefill_size: int | None = None
    seed: int = 0
    """Seed of requests that sample without one (SGLang's ``--random-seed``)."""
    model: str = "sim-llama-3-8b"
    host: str = "127.0.0.1"
    port: int = 30000
    model_path: str | None = None
    """Tokenizer directory reported as ``model_path``; default: a generated cache dir."""
    tokenizer: str = "cl100k"
    """``cl100k`` or ``bytes`` (one token per UTF-8 byte): a deployment whose tokenizer
    is not the one anybody assumed (the gateway must not depend on it)."""
    eos_after: tuple[int, int] = EOS_AFTER
    """Without ``ignore_eos`` a sequence emits EOS after this many tokens (inclusive range;
    the exact count is drawn from prompt and seed)."""
    api: Literal["sglang", "openai"] = "sglang"
    """``openai``: a plain OpenAI-compatible server (like vLLM or llama.cpp): no ``/generate``,
    ``/get_server_info``, ``/get_load``, ``/flush_cache`` ...; ``rid`` and ``priority`` ignored;
    no ``matched_stop`` or cached-token details in answers."""

    def engine_config(self) -> EngineConfig:
        p = get_profile(self.profile)
        return EngineConfig(
            profile=p,
            max_running_requests=self.max_running_requests or p.max_running_requests,
            kv_capacity_tokens=self.kv_capacity_tokens or p.kv_capacity_tokens,
            chunked_prefill_size=self.chunked_prefill_size or p.chunked_prefill_size,
        )
