"""Application-aware scheduling policy (pure): events in, dispatch decisions out.

The gateway keeps the queue; engines get only what ``admission`` lets through,
so the order stays ours to choose. ``Scheduler.schedule(now)`` drains the fair
queue (latency class first; fair between tenants; inside a tenant, older
applications first, then more remaining downstream work; aging for throughput
work) and places every job it can:

- every job goes to the cheapest engine that admits it now, by the cost in
  ``placement`` (its own finish, the stall and slowdown it imposes on the
  engine's other requests, and the engine time it spends), so a shared prefix
  keeps its jobs together until joining the busier engine costs more than
  recomputing the prefix elsewhere. A prefix this replica has not seen yet
  counts as held by its *home*: the engine with the highest rendezvous hash of
  its first ``home_blocks`` blocks, which every replica computes alike, so
  replicas route a new prefix to the same engine without talking to each other.
  A holder loaded beyond both balance thresholds relative to the least-loaded
  engine is never a candidate;
- the siblings of a task group leave together, longest first, each placed by
  the same score, which spreads them and still honours a shared prefix;
- a job whose chosen engine is still computing (``pending``) a shared prefix
  of at least ``warmup_min_tokens`` is held as a follower of the job
  computing it (the leader) and re-queued when the leader's prefill is done,
  fails, is cancelled, or ``warmup_timeout_s`` passes; followers reserve
  slots on that engine, so once they fill it the next job becomes a leader
  elsewhere and each engine prefills the prefix about once.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from . import placement
from .admission import REASONS, refusal
from .engines import EngineState, EngineTable
from .fair_queue import LATENCY, THROUGHPUT, FairQueue
from .prefix_index import PrefixIndex
from .types import Dispatch, Job, SchedulerConfig

_QUEUED, _HELD, _INFLIGHT = "queued", "held", "inflight"
_MAX_HOLDER_SCAN = 16  # prefix-holding engines examined per job
_SCAN_ALL = 16  # with at most this many engines, every one is a candidate


@dataclass
class _Rec:
    job: Job
    hashes: tuple[int, ...]
    tpb: float  # estimated tokens per hash block
    state: str = _QUEUED
    engine: str | None = None  # in flight: where; held: where the leader runs
    leader: str | None = None  # held: the job we wait for
    cls: int = LATENCY
    expected: int = 0
    work: float = 0.0
    kv: int = 0
    uncached: int = 0  # in flight, prefill not done: its share of the engine's backlog
    pending_leader: bool = False  # in flight and computing a shared prefix
    prefill_cost: float = 0.0  # in flight, prefill not done: its share of the engine backlog
    prefill_done: bool = False
    prefilling: bool = False  # counted in its engine's ``prefilling``
    dispatched_at: float = 0.0
    ahead: int = 0  # prompt tokens the engine had to prefill before its first token (ours)
    followers: list[str] = field(default_factory=list)


class Scheduler:
    """The parrot policy. See the module docstring for the rules."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = cfg = config or SchedulerConfig()
        self._engines = EngineTable(cfg.latency_reserve_frac, cfg.external_request_work)
        self._index = PrefixIndex(cfg.block_tokens)
        self._queue = FairQueue(cfg.max_wait_s)
        self._recs: dict[str, _Rec] = {}
        self._groups: dict[str, dict[str, None]] = {}  # group -> queued member ids
        self._warmups: deque[tuple[float, str]] = deque()  # (deadline, leader)
        self._dispatched = 0
        self._held = 0
        self._refused: Counter[str] = Counter()  # admission refusals, by reason
        self._protected: frozenset[str] = frozenset()
        self._now = 0.0

    # engines -----------------------------------------------------------------
    def add_engine(
        self,
        engine: str,
        capacity: int,
        kv_capacity_tokens: int | None,
        now: float,
        chunk_tokens: int | None = None,
    ) -> None:
        """Add (or resize) an engine. ``capacity``: requests it may run at once;
        ``chunk_tokens``: what it prefills per forward pass (SGLang chunked_prefill_size)."""
        self._engines.add(
            engine, self.config.engine_capacity(capacity), kv_capacity_tokens,
            chunk_tokens or self.config.default_chunk_tokens,
        )
        if self._index.blocks(engine) == 0:
            self._index.add_engine(
                engine, kv_capacity_tokens or self.config.default_kv_capacity_tokens
            )

    def remove_engine(self, engine: str, now: float) -> list[str]:
        """Forget an engine; returns the ids of jobs in flight there (now dropped)."""
        e = self._engines.remove(engine)
        self._index.remove_engine(engine)
        if e is None:
            return []
        lost = sorted(e.jobs)
        for jid in lost:
            rec = self._recs.pop(jid)
            self._release(rec)
        return lost

    def set_healthy(self, engine: str, healthy: bool, now: float) -> None:
        e = self._engines.get(engine)
        if e is not None and e.healthy != healthy:
            self._engines.update(e, healthy=healthy)

    def set_share(self, share: float, now: float) -> None:
        """This replica's fraction of every engine's capacity and budgets."""
        self._engines.set_share(share)

    def on_load(
        self, engine: str, num_reqs: int, num_waiting: int, num_tokens: int, now: float
    ) -> None:
        """Engine-reported load; requests beyond ours come from other clients."""
        e = self._engines.get(engine)
        if e is None:
            return
        e.reported_tokens = num_tokens
        external = max(0, num_reqs + num_waiting - e.inflight)
        if external != e.external_reqs:
            self._engines.update(e, external_reqs=external)

    # jobs ----------------------------------------------------------------------
    def submit(self, job: Job, now: float) -> None:
        """Queue a ready job. Ids must be unique among live jobs."""
        if job.id in self._recs:
            raise ValueError(f"job {job.id!r} already submitted")
        tpb = job.block_tokens if job.block_tokens > 0 else float(self.config.block_tokens)
        rec = _Rec(job, job.prefix_hashes, tpb)
        self._recs[job.id] = rec
        cost = job.prompt_tokens * self.config.prefill_token_weight + job.max_tokens
        if not self.config.app_order:
            order: tuple[float, ...] = (1.0, now)
        elif job.attained is not None:
            order = (0.0, job.attained, now)  # least attained service first
        else:
            started = job.app_started if job.app_started is not None else now
            order = (1.0, started, -job.downstream_s)
        self._queue.push(job.id, job.tenant, job.weight, cost, job.latency_critical, now,
                         order=order)
        if job.group is not None:
            self._groups.setdefault(job.group, {})[job.id] = None

    def cancel(self, job_id: str, now: float) -> bool:
        """Drop a job wherever it is; an in-flight one counts as failed."""
        rec = self._recs.get(job_id)
        if rec is None:
            return False
        if rec.state == _INFLIGHT:
            self.on_finish(job_id, now, ok=False)
            return True
        if rec.state == _HELD:
            leader = self._recs.get(rec.leader or "")
            if leader is not None and job_id in leader.followers:
                leader.followers.remove(job_id)
            self._unreserve(rec.engine, 1)
        self._queue.take(job_id)
        self._queue.forget(job_id)
        self._ungroup(rec)
        del self._recs[job_id]
        return True

    def set_group(self, job_id: str, group: str | None, now: float) -> None:
        """Put a queued job in task group ``group`` (known only once its siblings'
        consumer registered); in-flight or unknown jobs are left alone."""
        rec = self._recs.get(job_id)
        if rec is None or rec.state != _QUEUED or rec.job.group == group:
            return
        self._ungroup(rec)
        rec.job.group = group
        if group is not None:
            self._groups.setdefault(group, {})[job_id] = None

    def on_prefill_done(self, job_id: str, now: float, observed: bool = True) -> None:
        """First token seen (``observed``), or the time estimated for it passed (a call
        that does not stream): a leader's prefix is cached, its followers may go."""
        rec = self._recs.get(job_id)
        if rec is None or rec.state != _INFLIGHT or rec.prefill_done:
            return
        if observed:
            self._learn_prefill_speed(rec, now)
        rec.prefill_done = True
        self._clear_backlog(rec)
        if rec.pending_leader:
            self._index.resolve(rec.engine or "", rec.hashes, job_id)
        self._release_followers(rec)

    def on_finish(
        self, job_id: str, now: float, cached_tokens: int | None = None, ok: bool = True
    ) -> None:
        """The job ended (or failed); ``cached_tokens`` is the engine's report."""
        rec = self._recs.get(job_id)
        if rec is None or rec.state != _INFLIGHT:
            return
        del self._recs[job_id]
        engine = rec.engine or ""
        if rec.cls == LATENCY and (e := self._engines.get(engine)) is not None:
            e.latency_at = now
        if ok or rec.prefill_done:
            self._release(rec)
            if cached_tokens is not None:
                self._index.observe(engine, rec.hashes, cached_tokens, rec.expected, rec.tpb)
        else:
            self._release(rec, abort=True)

    # decisions -----------------------------------------------------------------
    def schedule(self, now: float) -> list[Dispatch]:
        """Everything that can start now, in dispatch order."""
        if not self._queue and not self._warmups:
            return []  # nothing waits (every finish pumps; most find an empty queue)
        out: list[Dispatch] = []
        self._now = now
        self._expire_warmups(now)
        self._protected = placement.protected(self._engines.engines.values(), self.config, now)
        queue = self._queue
        free = self._engines.free
        skipped: list[str] = []
        while free[LATENCY] > 0:
            jid = queue.pop(now)
            if jid is None:
                break
            cls = queue.cls_of(jid)
            if free[cls] <= 0:
                skipped.append(jid)
                break
            rec = self._recs[jid]
            group = rec.job.group
            if group is not None and len(self._groups.get(group, ())) > 1:
                skipped.extend(self._place_group(rec, now, out))
            elif not self._place(rec, cls, now, out):
                skipped.append(jid)
            if len(skipped) > self.config.max_skips:
                break
        for jid in skipped:
            queue.requeue(jid)
        return out

    def queued(self) -> int:
        """Jobs waiting in the gateway (cheap: read per dispatch for the metric)."""
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        engines = {
            e.name: {
                "healthy": e.healthy,
                "capacity": e.capacity,
                "throughput_limit": e.thr_limit,
                "inflight": e.inflight,
                "reserved": e.reserved,
                "work": round(e.work, 1),
                "kv_tokens": e.kv_tokens,
                "external_reqs": e.external_reqs,
                "prefill_backlog_tokens": e.backlog_tokens,
                "applications": len(e.apps),
                "latency_inflight": e.latency_inflight,
                "protected": e.name in self._protected,
                "cache_blocks": self._index.blocks(e.name),
            }
            for e in self._engines.engines.values()
        }
        return {
            "policy": "parrot",
            "share": self._engines.share,
            "queued": len(self._queue),
            "queued_latency": self._queue.class_len(LATENCY),
            "queued_throughput": self._queue.class_len(THROUGHPUT),
            "queued_by_tenant": self._queue.tenant_counts(),
            "held": self._held,
            "inflight": sum(e.inflight for e in self._engines.engines.values()),
            "dispatched": self._dispatched,
            "admission_refusals": {r: self._refused[r] for r in REASONS},
            "engines": engines,
        }

    # placement -----------------------------------------------------------------
    def _place(self, rec: _Rec, cls: int, now: float, out: list[Dispatch]) -> bool:
        """Dispatch or hold ``rec``; False when no engine can take it now."""
        job = rec.job
        kv = job.prompt_tokens + job.max_tokens
        table = self._engines
        if job.pin_engine is not None:
            target = table.get(job.pin_engine)
            if target is None or not target.fits(kv, cls):
                return False
            cached = int(self._index.match(target.name, rec.hashes).resident * rec.tpb)
            if self._refuse(rec, target, cls, cached):
                return False
        else:
            avoid = job.avoid
            if avoid and sum(1 for a in avoid if a in table) >= table.healthy_count():
                avoid = frozenset()  # nothing else left: a retry beats waiting forever
            chosen = self._choose(rec, cls, kv, avoid)
            if chosen is None:
                return False
            target = chosen
        m = self._index.match(target.name, rec.hashes)
        if m.pending and m.pending * rec.tpb >= self.config.warmup_min_tokens:
            leader = self._recs.get(m.leader or "")
            if leader is not None and leader.state == _INFLIGHT and leader is not rec:
                self._hold(rec, leader, target, now)
                return True
        self._dispatch(rec, target, cls, int(m.resident * rec.tpb), out, now)
        return True

    def _refuse(self, rec: _Rec, e: EngineState, cls: int, cached: int) -> bool:
        """Admission check; counts the refusal by reason."""
        job = rec.job  # an inferred program has one step in flight: a window would only cap batches
        app = job.session if job.attained is None else None
        why = refusal(
            e, max(0, job.prompt_tokens - cached), cls == LATENCY, app,
            e.name in self._protected, self.config, self._engines.share, self._now,
        )
        if why is None:
            return False
        self._refused[why] += 1
        return True

    def _candidates(
        self, rec: _Rec, cls: int, kv: int, avoid: frozenset[str]
    ) -> list[tuple[EngineState, int, int]]:
        """Engines that could take the job (slots, KV), with the tokens they are
        believed to hold: for scoring (the home's hint included) and for real."""
        table = self._engines
        engines = table.engines
        cached_on: dict[str, int] = {}
        seen = 0
        for depth, holders in self._index.levels(rec.hashes):
            cached = int(depth * rec.tpb)
            if cached < self.config.affinity_min_tokens or seen >= _MAX_HOLDER_SCAN:
                break
            for name in holders:
                if name not in cached_on:
                    cached_on[name] = cached
                    seen += 1
        aff = rec.job.affinity
        if aff is not None and aff[0] in engines and cached_on.get(aff[0], 0) < aff[1]:
            cached_on[aff[0]] = aff[1]
        hint: dict[str, int] = {}
        if not cached_on:
            home = placement.home(engines.values(), rec.hashes, avoid, self.config.home_blocks)
            if home is not None:
                # Nobody here has seen this prefix; its home (the same on every
                # replica) is where another replica sent it: score it as held.
                blocks = min(len(rec.hashes), self.config.home_blocks)
                hint[home] = int(blocks * rec.tpb)
        if len(engines) <= _SCAN_ALL:
            pool = list(engines.values())
        else:
            names = dict.fromkeys([*cached_on, *hint])
            pool = [engines[n] for n in names if n in engines]
            least = table.least_loaded(cls, kv, avoid)
            if least is not None and least.name not in names:
                pool.append(least)
        return [
            (e, cached_on.get(e.name, 0) or hint.get(e.name, 0), cached_on.get(e.name, 0))
            for e in pool
            if e.name not in avoid and e.fits(kv, cls)
        ]

    def _choose(
        self, rec: _Rec, cls: int, kv: int, avoid: frozenset[str]
    ) -> EngineState | None:
        """The cheapest candidate that admits the job now (see module docstring)."""
        cands = self._candidates(rec, cls, kv, avoid)
        if not cands:
            return None
        cfg = self.config
        lightest = min((c[0] for c in cands), key=lambda e: (e.load, e.order))
        n_tokens = rec.job.prompt_tokens
        mt = rec.job.max_tokens
        ranked = []
        for e, cached, held in cands:
            if cached and e is not lightest and placement.imbalanced(e, lightest, cfg):
                cached = 0  # too loaded to be worth its cache: scored as a plain engine
            elif cached > held and e.load > lightest.load + cfg.home_slack:
                cached = held  # a home is a tie-breaker between similar loads, not a pull
            uncached = max(0, n_tokens - cached)
            ranked.append((placement.score(e, uncached, mt, cfg), -cached, e.key, e.order, held, e))
        ranked.sort(key=lambda r: r[:4])
        for *_, held, e in ranked:
            if not self._refuse(rec, e, cls, held):
                return e
        return None

    def _place_group(self, first: _Rec, now: float, out: list[Dispatch]) -> list[str]:
        """Dispatch the ready siblings of ``first`` together; returns those left over."""
        group = first.job.group or ""
        members = [first]
        for jid in list(self._groups.get(group, ())):
            if jid != first.job.id and self._queue.take(jid):
                members.append(self._recs[jid])
        w = self.config.prefill_token_weight
        members.sort(key=lambda r: -(r.job.prompt_tokens * w + r.job.max_tokens))
        left = []
        for rec in members:
            cls = self._queue.cls_of(rec.job.id)
            if self._engines.free[cls] <= 0 or not self._place(rec, cls, now, out):
                left.append(rec.job.id)
        return left

    def _dispatch(
        self, rec: _Rec, e: EngineState, cls: int, cached: int, out: list[Dispatch], now: float
    ) -> None:
        job = rec.job
        jid = job.id
        cfg = self.config
        uncached = max(0, job.prompt_tokens - cached)
        rec.state, rec.engine, rec.expected, rec.cls = _INFLIGHT, e.name, cached, cls
        rec.work = uncached * cfg.prefill_token_weight + job.max_tokens
        rec.kv = uncached + job.max_tokens
        rec.prefill_cost = uncached * cfg.cost_prefill_token
        rec.uncached = uncached
        rec.prefilling = True
        rec.dispatched_at = now
        rec.ahead = e.backlog_tokens + uncached
        e.backlog += rec.prefill_cost
        e.prefilling += 1
        e.backlog_tokens += uncached
        e.add_prefill(uncached, now, cfg.duty_window_s)
        if cls == LATENCY:
            e.backlog_latency += uncached
            e.latency_inflight += 1
            e.latency_at = now
            e.prefilling_latency += 1
        if job.session is not None:
            e.apps[job.session] = e.apps.get(job.session, 0) + 1
        rec.pending_leader = self._index.insert(e.name, rec.hashes, leader=jid) > 0
        if cls == THROUGHPUT:
            priority = cfg.priority_throughput
        elif self._queue.promoted(jid):
            priority = cfg.priority_aged
        else:
            priority = cfg.priority_latency
        priority += placement.age_bonus(job, now, cfg)
        self._queue.forget(jid)
        self._ungroup(rec)
        e.jobs.add(jid)
        self._engines.update(e, inflight=1, work=rec.work, kv=rec.kv)
        self._dispatched += 1
        eta = placement.prefill_eta(e, rec.ahead, cfg, self._engines.share)
        out.append(Dispatch(jid, e.name, priority, cached, eta))

    def _learn_prefill_speed(self, rec: _Rec, now: float) -> None:
        """Seconds per prefilled token as this engine really delivers them (queueing,
        decode steps in between, other clients included): from streamed first tokens,
        for the estimates of calls that do not stream."""
        e = self._engines.get(rec.engine or "")
        if e is None or rec.ahead < 256:
            return
        sample = max(0.0, now - rec.dispatched_at) / rec.ahead
        e.prefill_s_per_token += 0.1 * (sample - e.prefill_s_per_token)

    # warm-up -------------------------------------------------------------------
    def _hold(self, rec: _Rec, leader: _Rec, e: EngineState, now: float) -> None:
        rec.state, rec.leader, rec.engine = _HELD, leader.job.id, e.name
        if not leader.followers:
            self._warmups.append((now + self.config.warmup_timeout_s, leader.job.id))
        leader.followers.append(rec.job.id)
        self._ungroup(rec)
        self._held += 1
        self._engines.update(e, reserved=1)

    def _release_followers(self, leader: _Rec) -> None:
        if not leader.followers:
            return
        followers, leader.followers = leader.followers, []
        self._unreserve(leader.engine, len(followers))
        for jid in followers:
            f = self._recs.get(jid)
            if f is None or f.state != _HELD:
                continue
            f.state, f.leader, f.engine = _QUEUED, None, None
            self._queue.requeue(jid)
            if f.job.group is not None:
                self._groups.setdefault(f.job.group, {})[jid] = None

    def _expire_warmups(self, now: float) -> None:
        """Safety net: a leader that reports nothing for too long frees its followers."""
        q = self._warmups
        while q and q[0][0] <= now:
            _, jid = q.popleft()
            leader = self._recs.get(jid)
            if leader is None or not leader.followers:
                continue
            if leader.pending_leader:
                self._index.resolve(leader.engine or "", leader.hashes, jid)
            self._release_followers(leader)

    def _unreserve(self, engine: str | None, n: int) -> None:
        self._held -= n
        e = self._engines.get(engine or "")
        if e is not None:
            self._engines.update(e, reserved=-n)

    # bookkeeping -----------------------------------------------------------------
    def _release(self, rec: _Rec, abort: bool = False) -> None:
        """Free an in-flight job's resources and wake its followers."""
        engine = rec.engine or ""
        jid = rec.job.id
        if rec.pending_leader and not rec.prefill_done:
            if abort:
                self._index.abort(engine, rec.hashes, jid)
            else:
                self._index.resolve(engine, rec.hashes, jid)
        self._release_followers(rec)
        self._clear_backlog(rec)
        e = self._engines.get(engine)
        if e is not None and jid in e.jobs:
            e.jobs.discard(jid)
            if rec.cls == LATENCY:
                e.latency_inflight -= 1
            app = rec.job.session
            if app is not None:
                left = e.apps.get(app, 0) - 1
                if left > 0:
                    e.apps[app] = left
                else:
                    e.apps.pop(app, None)
            self._engines.update(e, inflight=-1, work=-rec.work, kv=-rec.kv)

    def _clear_backlog(self, rec: _Rec) -> None:
        e = self._engines.get(rec.engine or "")
        if rec.prefilling and e is not None:
            e.prefilling -= 1
            if rec.cls == LATENCY:
                e.prefilling_latency -= 1
        rec.prefilling = False
        if rec.prefill_cost and e is not None:
            e.backlog = max(0.0, e.backlog - rec.prefill_cost)
        rec.prefill_cost = 0.0
        if rec.uncached and e is not None:
            e.backlog_tokens -= rec.uncached
            if rec.cls == LATENCY:
                e.backlog_latency -= rec.uncached
        rec.uncached = 0

    def _ungroup(self, rec: _Rec) -> None:
        g = rec.job.group
        if g is not None:
            members = self._groups.get(g)
            if members is not None:
                members.pop(rec.job.id, None)
                if not members:
                    del self._groups[g]
