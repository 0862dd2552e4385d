"""Plain data of the scheduling policy: jobs in, decisions out, one config.

Nothing here performs I/O or reads a clock; every event carries ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Job:
    """One request whose inputs are all available, ready to run."""

    id: str
    tenant: str
    prompt_tokens: int  # prompt length in tokens (an estimate where no tokenizer runs)
    max_tokens: int
    latency_critical: bool  # deduced objective
    group: str | None = None  # task group (map stage) id
    session: str | None = None  # the application it belongs to (session or inferred program)
    weight: float = 1.0  # tenant weight for fair queuing
    pin_engine: str | None = None  # must run there (waits while that engine is unavailable)
    avoid: frozenset[str] = frozenset()  # engines not to use (retries after failure)
    app_started: float | None = None  # when its application (session) started, same clock as now
    prefix_hashes: tuple[int, ...] = ()  # chained block hashes of the prompt (analysis.prefix)
    block_tokens: float = 0.0  # estimated tokens per hash block (0: the config's block_tokens)
    downstream_s: float = 0.0  # estimated work after it on its application's critical path
    # Service its application has received so far (tokens), for programs inferred
    # from plain traffic: when set, the least-served application goes first inside
    # the tenant (least attained service) instead of the oldest.
    attained: float | None = None
    # (engine, tokens): an engine believed to hold that many of its prompt tokens although
    # this replica's prefix index may not know it (inferred programs: the engine that ran
    # the program's previous step, from the program record every replica shares).
    affinity: tuple[str, int] | None = None


@dataclass
class Dispatch:
    """Send ``job_id`` to ``engine`` now, with SGLang ``priority`` (higher = sooner)."""

    job_id: str
    engine: str
    priority: int
    expected_cached_tokens: int
    prefill_eta_s: float = 0.0  # when its prefill should be done (for calls that do not stream)


@dataclass
class SchedulerConfig:
    """Knobs of the policy. ``from_settings`` maps the gateway Settings onto it."""

    block_tokens: int = 32  # tokens per prefix-hash block when a job does not estimate its own
    # Consistent routing across replicas: a prefix nobody here has seen yet is
    # treated as held by its rendezvous-hash "home" engine, named by the hash of
    # its first ``home_blocks`` blocks (the same on every replica, no Redis trip).
    home_blocks: int = 8
    home_slack: int = 2  # ... while its load is within this many requests of the lightest
    warmup_min_tokens: int = 256  # pending shared prefix that makes followers wait
    warmup_timeout_s: float = 30.0  # followers are released after this even without news
    # Hard override only: a prefix holder whose load (requests in flight, held or
    # external) exceeds the least-loaded engine's by more than the gap AND the ratio
    # is not a candidate, whatever its cost score (a guard for tiny outputs, where
    # the batch term is too weak to stop piling, and for bad estimates).
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    affinity_min_tokens: int = 64  # a cached prefix shorter than this is not worth routing for
    max_inflight_per_engine: int | None = None  # caps each engine's advertised capacity
    latency_reserve_frac: float = 0.125  # share of slots throughput work may not take
    default_kv_capacity_tokens: int = 400_000  # prefix-cache size assumed when unknown
    max_wait_s: float = 30.0  # throughput job queued longer than this is promoted (aging)
    # SGLang priorities (higher = sooner). Classes are 1,000 apart; inside a class a
    # request gains ``age_priority_per_s`` per second its application has been
    # running (capped below the next class), so an engine's waiting queue runs the
    # steps of older applications first: a reduce is not queued behind the maps of
    # applications that arrived after it started (application-level FIFO).
    priority_latency: int = 2000
    priority_aged: int = 1000
    priority_throughput: int = 0
    age_priority_per_s: float = 10.0
    age_priority_cap: int = 999
    attained_priority_per_token: float = 0.02  # programs: priority lost per token of service
    app_order: bool = True  # False: FIFO inside a tenant and no age priority (comparisons)
    prefill_token_weight: float = 0.05  # cost of one uncached prompt token vs one output token
    external_request_work: float = 128.0  # work assumed per request we did not send (on_load)
    max_skips: int = 16  # unplaceable queue heads (pin/avoid/KV/admission) passed over per schedule()
    # Placement cost model, in decode-step units (one step of a small batch). Defaults
    # from the sim's h100-llama3-8b profile: a decode step is 5.8 ms at batch 1 / 4k KV
    # and 8.5 ms at batch 16 / 64k KV, i.e. +(8.5-5.8)/15 = 0.18 ms = 0.03 steps per
    # co-running sequence of ~4k context; prefill runs ~33 us/token = 0.0056 steps.
    cost_decode_token: float = 1.0  # s: steps per output token
    cost_prefill_token: float = 0.0056  # c_p: steps per uncached prompt token
    cost_batch_slowdown: float = 0.03  # alpha: relative step slowdown per co-running request
    # Admission (gateway-side, see admission.py). Work is held in the gateway, in
    # our order, instead of queueing inside the engines:
    # - prefill budget: an engine gets new prompt tokens only while the tokens it
    #   was sent and has not prefilled yet stay under ``prefill_budget_chunks`` of
    #   its chunked-prefill size (what it prefills in one or two forward passes);
    prefill_budget_chunks: float = 1.0
    latency_budget_chunks: float = 2.0  # the same for latency-class work (its own backlog)
    default_chunk_tokens: int = 8192  # SGLang's chunked_prefill_size when the engine does not say
    # - application window: an engine runs work of at most ``app_window``
    #   applications at once (0 = no limit); a new application's prefill would
    #   stall the decoding of the older ones (prefill-first engines), so it waits.
    #   Off by default: with every app queued it kept the engines' batches small
    #   (full-size map-reduce, 32 apps in flight: 1.77 apps/s with a window of 8
    #   against 2.60 without; at the baseline's capacity 11.7 s mean against 6.7);
    app_window: int = 0
    app_window_duty: float = 0.5  # ... only while prefill takes more than this share of the engine
    prefill_s_per_token: float = 3.3e-5  # engine seconds per prefilled token (estimates duty)
    decode_step_s: float = 0.006  # one decode step (the first token comes after the prefill)
    duty_window_s: float = 2.0  # time constant of the prefill-duty estimate
    # - latency protection: while an engine decodes latency-class work, or did so
    #   within ``protect_linger_s``, throughput jobs bring it at most
    #   ``protect_prefill_tokens`` uncached prompt tokens each while prefill takes
    #   ``protect_duty`` of its time (heavy batch prefill goes to other engines), and
    #   its unprefilled throughput tokens stay under ``protect_backlog_tokens``, so a
    #   chat arriving there waits for a short prefill pass, not an 8k-token chunk; at
    #   most ``protect_frac`` of the engines (at least one) are protected at once.
    protect_latency: bool = True
    protect_prefill_tokens: int = 512
    protect_linger_s: float = 5.0
    protect_backlog_tokens: int = 2048
    protect_duty: float = 0.5  # ... unless its recent prefill duty is below this
    protect_batch: int = 32  # throughput requests a protected engine decodes at once (0 = any)
    protect_frac: float = 0.5

    def engine_capacity(self, advertised: int) -> int:
        """An engine's in-flight limit: what it advertises, capped by the config."""
        cap = self.max_inflight_per_engine
        return advertised if cap is None else min(advertised, cap)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SchedulerConfig:
        """Build from a ``gateway.settings.Settings`` (attribute reads only)."""
        values: dict[str, Any] = {
            "block_tokens": settings.prefix_block_tokens,
            "warmup_min_tokens": settings.warmup_min_tokens,
            "balance_abs_threshold": settings.balance_abs_threshold,
            "balance_rel_threshold": settings.balance_rel_threshold,
            "max_inflight_per_engine": settings.max_inflight_per_engine,
        }
        for name in ("prefill_budget_chunks", "app_window", "protect_latency", "protect_duty",
                     "protect_linger_s", "protect_backlog_tokens", "app_order"):
            if hasattr(settings, name):
                values[name] = getattr(settings, name)
        values.update(overrides)
        return cls(**values)


class Policy(Protocol):
    """What the gateway drives; Scheduler and the baselines all implement it."""

    def add_engine(
        self,
        engine: str,
        capacity: int,
        kv_capacity_tokens: int | None,
        now: float,
        chunk_tokens: int | None = None,
    ) -> None: ...
    def remove_engine(self, engine: str, now: float) -> list[str]: ...
    def set_healthy(self, engine: str, healthy: bool, now: float) -> None: ...
    def set_share(self, share: float, now: float) -> None: ...
    def on_load(
        self, engine: str, num_reqs: int, num_waiting: int, num_tokens: int, now: float
    ) -> None: ...
    def submit(self, job: Job, now: float) -> None: ...
    def cancel(self, job_id: str, now: float) -> bool: ...
    def set_group(self, job_id: str, group: str | None, now: float) -> None: ...
    def on_prefill_done(self, job_id: str, now: float, observed: bool = True) -> None: ...
    def on_finish(
        self, job_id: str, now: float, cached_tokens: int | None = None, ok: bool = True
    ) -> None: ...
    def schedule(self, now: float) -> list[Dispatch]: ...
    def queued(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
