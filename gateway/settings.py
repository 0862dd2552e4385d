"""One typed settings object, read once at the entry point.

Precedence (highest first): CLI flags, ``PARROT_<NAME>`` environment variables,
the ``--config`` file (YAML, TOML or JSON), then the defaults below. The Helm
chart's ConfigMap uses exactly these field names.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "PARROT_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # network
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    # engines
    backend: list[str] = Field(
        default_factory=list, description="Engine base URLs; empty starts simulated engines."
    )
    backend_kind: Literal["sglang", "openai"] = Field("sglang", description="Engine API kind.")
    sim_engines: int = Field(2, ge=1, le=64, description="Simulated engines when no backend.")
    sim_profile: str = Field("h100-llama3-8b", description="Cost profile of simulated engines.")
    sim_time_scale: float = Field(1.0, gt=0, description="Wall-time factor of simulated engines.")
    # state
    redis: str | None = Field(None, description="Redis URL; empty starts an embedded redis-server.")
    redis_appendonly: bool = Field(False, description="Embedded Redis: AOF persistence on.")
    redis_dir: str | None = Field(None, description="Embedded Redis: data directory.")
    # auth
    api_keys: str | None = Field(None, description="Path of the API-keys file (JSON or YAML).")
    config: str | None = Field(None, description="Path of a settings file (YAML, TOML, JSON).")
    # limits
    max_body_bytes: int = Field(8 << 20, gt=0, description="Largest request body accepted.")
    max_messages: int = Field(2048, gt=0, description="Most messages in one chat request.")
    max_placeholders: int = Field(256, gt=0, description="Most placeholders in one request.")
    max_variables_per_session: int = Field(10000, gt=0, description="Variables per session.")
    max_value_bytes: int = Field(1 << 20, gt=0, description="Largest variable value.")
    session_ttl_s: int = Field(3600, gt=0, description="TTL of session state in Redis.")
    default_timeout_s: float = Field(600.0, gt=0, description="Default session deadline.")
    max_wait_s: float = Field(60.0, gt=0, description="Longest long-poll wait.")
    # engine calls
    engine_connect_timeout_s: float = Field(5.0, gt=0, description="Engine connect timeout.")
    engine_timeout_s: float = Field(600.0, gt=0, description="Engine read timeout.")
    health_interval_s: float = Field(2.0, gt=0, description="Engine health-check period.")
    max_inflight_per_engine: int | None = Field(
        128, ge=1, description="Cap on requests in flight per engine, all replicas together "
        "(null: the engine's own cap). Work beyond it waits here in application order instead "
        "of widening the engine's batch, whose every decode step slows with the KV it reads.",
    )
    engine_streaming: bool = Field(
        False,
        description="Stream from engines even for non-streaming clients: an exact first-token "
                    "signal, at the CPU cost of parsing every token; off, the policy's learned "
                    "estimate stands in for it.",
    )
    retry_budget: int = Field(2, ge=0, description="Retries on another engine before first token.")
    max_queued_requests: int = Field(
        4096, ge=1,
        description="Plain requests waiting for an engine per replica; past it new ones get "
        "503 overloaded with Retry-After.",
    )
    max_accepted_requests: int = Field(
        20000, ge=1,
        description="Semantic requests accepted and unfinished per replica; past it new ones "
        "get 503 overloaded with Retry-After before anything is recorded.",
    )
    engine_wait_s: float = Field(
        120.0, ge=0,
        description="How long accepted semantic work waits for an engine back in rotation "
        "(bounded by the session deadline) before it fails.",
    )
    breaker_failures: int = Field(3, ge=1, description="Failures that open an engine's breaker.")
    breaker_reset_s: float = Field(5.0, gt=0, description="Open-breaker cool-down.")
    # scheduling
    scheduler_policy: Literal["parrot", "round_robin", "least_loaded"] = Field(
        "parrot", description="Scheduling policy; the baselines exist for comparison."
    )
    prefix_block_tokens: int = Field(
        32, ge=1, description="Tokens per prefix block assumed before engines report usage."
    )
    prefix_block_bytes: int = Field(
        128, ge=16, le=65536,
        description="Prefix identity: prompts are hashed in blocks of this many canonical bytes "
                    "(no tokenizer on the hot path).",
    )
    warmup_min_tokens: int = Field(256, ge=1, description="Shared-prefix size that triggers warm-up.")
    balance_abs_threshold: int = Field(32, ge=0, description="In-flight gap that overrides affinity.")
    balance_rel_threshold: float = Field(1.5, ge=1.0, description="Load ratio that overrides affinity.")
    # programs inferred from plain traffic (gateway/programs.py)
    infer_programs: bool = Field(
        True, description="Infer programs (agent loops, chats) from plain requests and schedule "
                          "them as applications (program age or attained service, engine affinity).",
    )
    program_ttl_s: int = Field(900, gt=0, description="TTL of inferred-program state in Redis.")
    program_order: Literal["age", "las"] = Field(
        "age", description="Order of inferred programs inside a tenant: program age (older first) "
                           "or least attained service.",
    )
    program_link_user: bool = Field(
        True, description="Link plain requests by their `user` field (when API keys name the tenant).",
    )
    # The scheduling mechanisms, each with a switch (the benchmarks' policy comparison
    # turns them off one at a time to show what each earns).
    app_order: bool = Field(
        True, description="Older applications first: gateway queue order and engine priority."
    )
    task_groups: bool = Field(True, description="Siblings of a map stage leave together.")
    app_window: int = Field(
        0, ge=0, description="Applications an engine runs at once while prefill dominates (0 = off)."
    )
    prefill_budget_chunks: float = Field(
        1.0, gt=0, description="Unprefilled tokens an engine may hold, in chunked-prefill sizes."
    )
    protect_latency: bool = Field(
        True, description="Keep heavy throughput prefill off engines decoding latency work."
    )
    intake_slots: int = Field(
        4, ge=0, description="Background submits (async, throughput) registered at once, so "
        "latency-critical requests are not queued behind a DAG's burst (0 = no gate).",
    )
    protect_duty: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Prefill share a protected engine still accepts throughput prefill below.",
    )
    protect_linger_s: float = Field(
        5.0, ge=0.0,
        description="An engine stays protected this long after its last latency-class request.",
    )
    protect_backlog_tokens: int = Field(
        2048, ge=0,
        description="Unprefilled throughput tokens a protected engine may hold (0 = no cap).",
    )
    # replicas (gateway/replicas.py, gateway/work.py)
    replica_heartbeat_s: float = Field(0.5, gt=0, description="Replica heartbeat period.")
    replica_ttl_s: float = Field(
        3.0, gt=0, description="A replica silent this long is dead; its work is adopted."
    )
    forward_sessions: bool = Field(
        True, description="Relay a session's request to the live replica that owns the session "
        "(rendezvous hash of its id), so one scheduler sees each whole application.",
    )
    advertise_url: str | None = Field(
        None, description="URL other replicas relay a session's requests to; empty: "
        "http://<host>:<port>, with this machine's address when bound to all interfaces.",
    )
    # lifecycle
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace period on SIGTERM.")
    workers: int = Field(
        1, ge=1, le=256,
        description="Gateway processes sharing the port (each a replica over the same Redis).",
    )
    keep_alive_s: float = Field(
        75.0, gt=0,
        description="HTTP keep-alive of idle client connections; above clients' and load "
        "balancers' own (httpx 5 s, nginx 60 s), so they close first, never the gateway "
        "under a request in flight.",
    )
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as one JSON object per line."
    )
    tracing: bool = Field(
        False, description="OpenTelemetry traces (needs the `otel` extra); also on when "
                           "OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT is set. Export "
                           "follows the standard OTEL_* variables.",
    )
    # session view (/ui)
    ui_secret: str | None = Field(
        None, description="HMAC key of signed view links; empty: generated, shared via Redis."
    )
    ui_link_ttl_s: int = Field(900, ge=10, le=86400, description="Lifetime of a signed view link.")
    ui_recent_sessions: int = Field(200, ge=1, le=10000, description="Sessions /ui lists per tenant.")

    def peer_url(self, port: int | None = None) -> str:
        """Where other replicas reach this one: ``advertise_url``, or one made of the bound
        address (this machine's when bound to all interfaces) and ``port``."""
        if self.advertise_url and port is None:
            return self.advertise_url.rstrip("/")
        host = urlsplit(self.advertise_url).hostname if self.advertise_url else self.host
        if not host or host in ("0.0.0.0", "::"):
            try:
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port if port is None else port}"

    @field_validator("backend", mode="before")
    @classmethod
    def _split_backends(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [u.strip() for u in v.replace(",", " ").split() if u.strip()]
        return v

    @classmethod
    def load(
        cls, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> Settings:
        """Merge config file < env < overrides (CLI flags; None means 'not given')."""
        env = dict(os.environ if env is None else env)
        given = {k: v for k, v in (overrides or {}).items() if v is not None and v != []}
        env_values = _from_env(env)
        config_path = given.get("config") or env_values.get("config")
        data: dict[str, Any] = {}
        if config_path:
            data.update(read_config_file(Path(config_path)))
        data.update(env_values)
        data.update(given)
        return cls(**data)


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            out[name] = raw
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}
