"""The engine state machine: SGLang's scheduler in miniature, with no I/O.

One ``step(now)`` is one forward pass. Like SGLang's default event loop, a
step runs a prefill (extend) batch when there is prefill work, else one decode
token for every running sequence. Waiting requests are admitted by priority
(higher ``priority`` first, as with ``--enable-priority-scheduling``) then
arrival, up to ``max_running_requests``, ``chunked_prefill_size`` new tokens
per step, and the KV pool: a request reserves its uncached prompt plus its
output budget, and waits while the pool (after evicting unreferenced cache)
cannot hold it. The cached prefix of a prompt (radix-tree match at admission)
skips prefill. Prompts enter the cache when prefilled, prompt + output when
finished.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .cost_model import prefill_pairs, step_time
from .profiles import CostProfile
from .radix import Node, RadixCache

# SGLang clips the output budget it reserves per request (CLIP_MAX_NEW_TOKENS).
RESERVE_CLIP = 4096


class RequestTooLarge(ValueError):
    """The request could never fit in the KV pool."""


@dataclass
class EngineRequest:
    rid: str
    input_ids: Sequence[int]
    output_ids: Sequence[int]
    """The tokens this request will produce (decided up front by textgen)."""
    priority: int = 0
    max_new_tokens: int | None = None
    """The output budget asked for; the KV reservation is sized by it, as SGLang does
    (default: ``len(output_ids)``, for requests that end exactly at their budget)."""

    @property
    def reserve_output(self) -> int:
        """Output tokens reserved in the KV pool at admission (clipped like SGLang)."""
        budget = self.max_new_tokens if self.max_new_tokens is not None else len(self.output_ids)
        return min(max(budget, len(self.output_ids)), RESERVE_CLIP)


@dataclass(frozen=True)
class Event:
    rid: str
    kind: Literal["first_token", "token", "finished", "aborted"]
    index: int = 0
    """Index of the produced output token (for first_token / token / finished)."""
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""


@dataclass(frozen=True)
class StepResult:
    duration: float
    events: list[Event]
    prefill_tokens: int = 0
    decode_batch: int = 0


@dataclass
class _Run:
    req: EngineRequest
    seq: int
    arrival: float
    cached: int = 0
    prefilled: int = 0  # uncached prompt tokens already run
    produced: int = 0
    node: Node | None = None
    reserved: int = 0  # private KV tokens held outside the tree

    @property
    def prefill_left(self) -> int:
        return len(self.req.input_ids) - self.cached - self.prefilled


@dataclass
class EngineConfig:
    profile: CostProfile
    max_running_requests: int
    kv_capacity_tokens: int
    chunked_prefill_size: int


@dataclass
class EngineStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.cache = RadixCache()
        self.waiting: list[_Run] = []
        self.running: dict[str, _Run] = {}
        self.reserved_tokens = 0
        self.stats = EngineStats()
        self._seq = itertools.count()
        self._pending_events: list[Event] = []

    # -- intake -------------------------------------------------------------
    def add(self, req: EngineRequest, now: float) -> None:
        if req.rid in self.running or any(r.req.rid == req.rid for r in self.waiting):
            raise ValueError(f"duplicate rid {req.rid!r}")
        if not req.input_ids:
            raise ValueError("empty prompt")
        need = len(req.input_ids) + req.reserve_output
        if need > self.config.kv_capacity_tokens:
            raise RequestTooLarge(
                f"prompt ({len(req.input_ids)}) + reserved output ({req.reserve_output} tokens) "
                f"exceeds the KV pool ({self.config.kv_capacity_tokens} tokens)"
            )
        self.waiting.append(_Run(req, next(self._seq), now))

    def abort(self, rid: str) -> bool:
        """Drop a waiting or running request (client gone, ``/abort_request``)."""
        for i, r in enumerate(self.waiting):
            if r.req.rid == rid:
                del self.waiting[i]
                self._pending_events.append(Event(rid, "aborted"))
                self.stats.aborted += 1
                return True
        run = self.running.pop(rid, None)
        if run is None:
            return False
        self._release(run)
        self._pending_events.append(Event(rid, "aborted"))
        self.stats.aborted += 1
        return True

    # -- state --------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._pending_events)

    @property
    def used_tokens(self) -> int:
        return self.cache.total_tokens + self.reserved_tokens

    def flush_cache(self) -> bool:
        """SGLang refuses to flush while requests are in flight; so do we."""
        if self.waiting or self.running:
            return False
        return self.cache.reset()

    # -- one forward pass ---------------------------------------------------
    def step(self, now: float) -> StepResult:
        events, self._pending_events = self._pending_events, []
        self._admit(now)
        prefilling = [r for r in self.running.values() if r.prefill_left > 0]
        if prefilling:
            return self._prefill_step(prefilling, now, events)
        if self.running:
            return self._decode_step(now, events)
        return StepResult(0.0, events)

    def _admit(self, now: float) -> None:
        cfg = self.config
        if not self.waiting:
            return
        self.waiting.sort(key=lambda r: (-r.req.priority, r.seq))
        budget = cfg.chunked_prefill_size - sum(
            r.prefill_left for r in self.running.values() if r.prefill_left > 0
        )
        admitted = 0
        for run in self.waiting:
            if len(self.running) >= cfg.max_running_requests or budget <= 0:
                break
            m = self.cache.match_prefix(run.req.input_ids, now)
            cached = min(m.length, len(run.req.input_ids) - 1)  # always prefill >= 1 token
            if cached < m.length:
                m = self.cache.match_prefix(run.req.input_ids[:cached], now)
            self.cache.lock(m.node)
            need = len(run.req.input_ids) - cached + run.req.reserve_output
            free = cfg.kv_capacity_tokens - self.used_tokens
            if free < need:
                free += self.cache.evict(need - free)
            if free < need:
                self.cache.unlock(m.node)
                break  # head of line waits for KV, as SGLang does
            run.cached, run.node, run.reserved = cached, m.node, need
            self.reserved_tokens += need
            self.running[run.req.rid] = run
            self.stats.prompt_tokens += len(run.req.input_ids)
            self.stats.cached_tokens += cached
            budget -= run.prefill_left
            admitted += 1
        del self.waiting[:admitted]

    def _prefill_step(self, runs: list[_Run], now: float, events: list[Event]) -> StepResult:
        budget = self.config.chunked_prefill_size
        tokens = pairs = 0
        done: list[_Run] = []
        for run in runs:
            if budget <= 0:
                break
            n = min(run.prefill_left, budget)
            pairs += prefill_pairs(run.cached, run.prefilled, n)
            run.prefilled += n
            tokens += n
            budget -= n
            if run.prefill_left == 0:
                done.append(run)
        duration = step_time(self.config.profile, tokens, pairs, 0, 0)
        end = now + duration
        for run in done:
            self._cache_prompt(run, end)
            if run.req.output_ids:
                self._produce(run, end, events)
            else:  # max_new_tokens=0: prefill only (cache warming)
                events.append(Event(run.req.rid, "finished", -1, run.cached))
                self._finish(run, end)
        return StepResult(duration, events, prefill_tokens=tokens)

    def _decode_step(self, now: float, events: list[Event]) -> StepResult:
        runs = list(self.running.values())
        kv = sum(len(r.req.input_ids) + r.produced for r in runs)
        duration = step_time(self.config.profile, 0, 0, len(runs), kv)
        end = now + duration
        for run in runs:
            self._produce(run, end, events)
        return StepResult(duration, events, decode_batch=len(runs))

    def _produce(self, run: _Run, now: float, events: list[Event]) -> None:
        idx = run.produced
        run.produced += 1
        self.stats.generation_tokens += 1
        if run.produced >= len(run.req.output_ids):
            events.append(Event(run.req.rid, "finished", idx, run.cached))
            self._finish(run, now)
        else:
            kind: Literal["first_token", "token"] = "first_token" if idx == 0 else "token"
            events.append(Event(run.req.rid, kind, idx, run.cached))

    def _cache_prompt(self, run: _Run, now: float) -> None:
        """Prefilled prompt KV moves from the request's reservation into the tree."""
        ids = run.req.input_ids
        self.cache.insert(ids, now)
        m = self.cache.match_prefix(ids, now)
        self.cache.lock(m.node)
        assert run.node is not None
        self.cache.unlock(run.node)
        run.node = m.node
        moved = min(len(ids) - run.cached, run.reserved)
        run.reserved -= moved
        self.reserved_tokens -= moved  # if a concurrent request cached them first, they are freed

    def _finish(self, run: _Run, now: float) -> None:
        self.running.pop(run.req.rid, None)
        self.cache.insert(list(run.req.input_ids) + list(run.req.output_ids), now)
        self._release(run)
        self.stats.finished += 1
        over = self.used_tokens - self.config.kv_capacity_tokens
        if over > 0:  # outputs beyond the clipped reservation
            self.cache.evict(over)

    def _release(self, run: _Run) -> None:
        if run.node is not None:
            self.cache.unlock(run.node)
            run.node = None
        self.reserved_tokens -= run.reserved
        run.reserved = 0
