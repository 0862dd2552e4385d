"""Gateway-side admission: may this engine take this job now, or should it wait here?

SGLang-style engines run prefill first: every forward pass that prefills new
prompt tokens stalls the decoding of everything already running. Sending an
engine all we have (what a plain router does) therefore lets the newest work
delay the oldest, and lets a deep engine queue decide the order instead of us.
So the gateway holds work back, on purpose, and releases it in its own order
(latency class first, then application age, then remaining downstream work):

* **prefill budget**: uncached prompt tokens sent to an engine and not yet
  prefilled stay under ``prefill_budget_chunks`` x its chunked-prefill size
  (about what it prefills in one forward pass), so a latency request that
  arrives finds at most that much prefill ahead of it. Latency-class work is
  checked against the latency backlog only (``latency_budget_chunks``, a
  little deeper so the engine always has the next pass queued): throughput
  prefill never makes it wait at our door (the engine's priority queue orders
  the rest).
* **application window**: while prefill takes most of an engine's time
  (``app_window_duty``, estimated from the tokens we sent it lately), it runs
  the work of at most ``app_window`` applications at once; a newer
  application's prefill waits while older ones decode, instead of stalling
  them. Decode-bound engines keep no window (it would only shrink their
  batches); requests without an application are never windowed. Off by
  default (``app_window`` 0): with every application queued it shrank the
  batches of prefill-heavy work too (map-reduce capacity 1.77 against 2.60).
* **latency protection**: on an engine that is decoding latency-class work, a
  throughput job may bring at most ``protect_prefill_tokens`` uncached tokens
  once prefill takes ``protect_duty`` of the engine's time; heavy batch
  prefill goes to the other engines (Parrot's split of latency and throughput
  engines, decided per moment from where latency work runs), and at most
  ``protect_batch`` throughput requests share its decode batch, so the
  latency work decodes at close to its unloaded speed.

Every rule yields when it would leave the engine idle, so holding back never
wastes capacity. All budgets scale with this replica's share of the engine.
"""

from __future__ import annotations

from .engines import EngineState
from .types import SchedulerConfig

PREFILL_BUDGET = "prefill_budget"
APP_WINDOW = "app_window"
PROTECTED = "latency_protected"
REASONS = (PREFILL_BUDGET, APP_WINDOW, PROTECTED)


def prefill_budget(e: EngineState, cfg: SchedulerConfig, share: float, latency: bool) -> float:
    chunks = cfg.latency_budget_chunks if latency else cfg.prefill_budget_chunks
    return max(1.0, chunks * e.chunk_tokens * share)


def app_window(cfg: SchedulerConfig, share: float) -> int:
    return max(1, round(cfg.app_window * share)) if cfg.app_window > 0 else 0


def refusal(
    e: EngineState,
    uncached: int,
    latency: bool,
    app: str | None,
    protected: bool,
    cfg: SchedulerConfig,
    share: float,
    now: float,
) -> str | None:
    """Why ``e`` may not take the job now (one of ``REASONS``), or None if it may."""
    idle = e.inflight == 0
    if uncached > 0 and not idle:
        budget = prefill_budget(e, cfg, share, latency)
        backlog = e.backlog_latency if latency else e.backlog_tokens
        if backlog > 0 and backlog + uncached > budget:
            return PREFILL_BUDGET
    if app is not None and not idle and app not in e.apps:
        window = app_window(cfg, share)
        if window and len(e.apps) >= window and e.prefill_duty(
            now, cfg.duty_window_s, cfg.prefill_s_per_token / share
        ) >= cfg.app_window_duty:
            return APP_WINDOW
    if protected and not latency:
        cap = cfg.protect_backlog_tokens
        if cap and uncached and e.backlog_tokens > 0 and e.backlog_tokens + uncached > cap:
            return PROTECTED
        if uncached > cfg.protect_prefill_tokens and e.prefill_duty(
            now, cfg.duty_window_s, cfg.prefill_s_per_token / share
        ) >= cfg.protect_duty:
            return PROTECTED
        if cfg.protect_batch and e.inflight - e.latency_inflight >= max(1, cfg.protect_batch * share):
            return PROTECTED
    return None
