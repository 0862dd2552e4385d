"""Placement and priority rules of the parrot policy, as pure functions of plain state.

The cost of running a job on an engine, in decode-step units
(``SchedulerConfig.cost_*``: s per output token, c_p per prefilled token,
alpha = step slowdown per co-running request), with ``u`` the prompt tokens
the engine neither holds nor is computing, ``running`` the requests decoding
there (each stalled by a prefill pass), ``joining`` our latency-class requests
waiting for the same prefill pass (their first tokens come when the whole pass
ends, so each waits for ``u`` too: stacking a burst of chats on one engine
delays every first token of the burst) and ``n`` those sharing its batch::

    own     = backlog + u*c_p + max_tokens*s*(1 + alpha*n)   # its own finish
    harm    = u*c_p*(running + joining) + max_tokens*s*alpha*n   # stalls + slowdown of the others
    compute = u*c_p                                          # engine time spent
    score   = own + harm + compute                           # ties: more cached tokens

so a shared prefix keeps its jobs together until joining the busier engine
costs more than recomputing the prefix elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from .engines import EngineState
from .types import Job, SchedulerConfig

_MASK = 0xFFFFFFFFFFFFFFFF


def score(e: EngineState, uncached: int, max_tokens: int, cfg: SchedulerConfig) -> float:
    """own + harm + compute of a job with ``uncached`` prompt tokens on ``e``."""
    running = e.inflight - e.prefilling + e.external_reqs  # decoding: stalled by its prefill
    n = running + e.reserved  # share the decode batch with it
    compute = max(0, uncached) * cfg.cost_prefill_token
    decode = max_tokens * cfg.cost_decode_token
    slowdown = decode * cfg.cost_batch_slowdown * n
    own = e.backlog + compute + decode + slowdown
    # A pass holds at most a chunk: behind a deeper backlog the job shares its pass with
    # only about a chunk's worth of the waiting requests.
    ahead = e.backlog_tokens + uncached
    joining = e.prefilling_latency * min(1.0, e.chunk_tokens / ahead) if ahead else 0.0
    harm = compute * (running + joining) + slowdown
    return own + harm + compute


def imbalanced(cand: EngineState, least: EngineState, cfg: SchedulerConfig) -> bool:
    """Loaded beyond both balance thresholds relative to the least-loaded engine."""
    gap = cand.load - least.load
    return gap > cfg.balance_abs_threshold and cand.load > least.load * cfg.balance_rel_threshold


def home(engines: Iterable[EngineState], hashes: tuple[int, ...], avoid: frozenset[str],
         k: int) -> str | None:
    """Rendezvous (highest random weight) hash of the prompt's first ``k`` blocks over
    the healthy engines: every replica and process picks the same engine."""
    if k <= 0 or len(hashes) < k:
        return None
    key = hashes[k - 1]
    best, best_w = None, -1
    for e in engines:
        if not e.healthy or e.name in avoid:
            continue
        w = ((key ^ e.name_hash) * 0x9E3779B97F4A7C15) & _MASK
        w ^= w >> 29
        if w > best_w:
            best, best_w = e.name, w
    return best


def protected(engines: Iterable[EngineState], cfg: SchedulerConfig, now: float) -> frozenset[str]:
    """Engines decoding latency-class work, most of it first, then those that did within
    ``protect_linger_s`` (latest first), at most ``protect_frac``. The linger keeps an
    engine light between chats: protection that starts with a chat's dispatch finds the
    engine in the middle of whatever heavy pass it was given meanwhile."""
    if not cfg.protect_latency:
        return frozenset()
    pool = list(engines)
    busy = [e for e in pool if e.healthy and (
        e.latency_inflight or now - e.latency_at < cfg.protect_linger_s)]
    if not busy:
        return frozenset()
    limit = max(1, int(len(pool) * cfg.protect_frac))
    busy.sort(key=lambda e: (-e.latency_inflight, -e.latency_at, e.order))
    return frozenset(e.name for e in busy[:limit])


def prefill_eta(e: EngineState, ahead: int, cfg: SchedulerConfig, share: float = 1.0) -> float:
    """Seconds from dispatch to the first token with ``ahead`` of our tokens to prefill
    first. A speed learned from streamed first tokens already holds whatever else the
    engine queues; the configured one counts only ours, so it is scaled by the engine's
    load that is not ours (requests other replicas sent, up to ``1 / share``). Unscaled,
    each of two replicas cleared its prefill backlog after its own tokens only and let in
    about twice its budget (measured, map-reduce at capacity: maps waited 36 ms at the
    gateway p50 against 1.4 s with one replica, and queued on the engines instead)."""
    if e.prefill_s_per_token:
        return ahead * e.prefill_s_per_token + cfg.decode_step_s
    mine = max(1, e.inflight)
    others = min(1.0 / share, (mine + e.external_reqs) / mine)
    return ahead * cfg.prefill_s_per_token * others + cfg.decode_step_s


def age_bonus(job: Job, now: float, cfg: SchedulerConfig) -> int:
    """Engine priority inside a class: how long the job's application has been running,
    or for an inferred program how little service it received (least attained first)."""
    if job.attained is not None:
        lost = int(job.attained * cfg.attained_priority_per_token)
        return cfg.age_priority_cap - min(cfg.age_priority_cap, lost)
    if job.app_started is None or not cfg.app_order:
        return 0
    return min(cfg.age_priority_cap, max(0, int((now - job.app_started) * cfg.age_priority_per_s)))
