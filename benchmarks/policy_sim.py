"""Whole applications on simulated engines in virtual time: a design tool for policies.

Couples the pure scheduling policy (``gateway.policy``), the pure engine model
of the simulated SGLang engine (``backends.sim.engine``) and the benchmark
workloads (``benchmarks.workloads``), with no HTTP, no Redis and no wall clock.
A run is deterministic and takes seconds, so a policy can be compared with its
peers at any load, and its saturated behaviour can be unit-tested. It is a
*model* of the real systems: figures that are published come from
``parrot-gateway bench`` on real processes, never from here.

Systems, as in ``parrot-gateway bench``:

* ``gateway``: the whole DAG submitted at the app's arrival; each step becomes a
  job once its inputs exist (after ``pipeline_s``), with the metadata the
  gateway's session analysis gives it (objective, task group, app age,
  remaining downstream work), and the policy decides when and where it runs.
* ``gateway-plain``: the client orchestrates (``client_rtt_s`` per call); each
  request reaches the policy as a plain job with no application metadata.
* ``baseline``: client orchestration straight to the engines, round robin.
* ``smg``: client orchestration through a model of SGLang Model Gateway's
  ``cache_aware`` policy (prefix match ratio over ``cache_threshold`` -> the
  best-matching worker; else the worker with the smallest tree; shortest queue
  when the load is imbalanced), with engine-side FIFO.

Prompts are token ids: each step's text is rendered with the chat template and
tokenized once per distinct piece, and upstream outputs are spliced in as the
producer's generated ids, so prefix sharing is as on the real engines.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from analysis.chat_template import BOS, EOT, HEADER
from analysis.dag import Node, SessionGraph
from analysis.prefix import block_hashes
from analysis.tokenizer import get_tokenizer
from backends.sim.engine import Engine, EngineConfig, EngineRequest, Event
from backends.sim.profiles import get_profile
from gateway.policy import Job, Policy, SchedulerConfig, make_scheduler

from .metrics import percentile
from .workloads import App, Step, Workload, build_workload

SYSTEMS = ("gateway", "gateway-plain", "baseline", "smg")
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]{0,63})\}\}")


@lru_cache(maxsize=65536)
def _encode(text: str) -> tuple[int, ...]:
    return tuple(get_tokenizer().encode(text))


def prompt_ids(step: Step, outputs: dict[str, tuple[int, ...]]) -> list[int]:
    """The step's rendered chat prompt as token ids, upstream outputs spliced in."""
    ids: list[int] = list(_encode(BOS))
    for role, text in (("system", step.system), ("user", step.user)):
        if text is None:
            continue
        ids += _encode(HEADER.format(role=role))
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            ids += _encode(text[pos : m.start()])
            ids += outputs.get(m.group(1), ())
            pos = m.end()
        ids += _encode(text[pos:])
        ids += _encode(EOT)
    ids += _encode(HEADER.format(role="assistant"))
    return ids


@dataclass
class SimConfig:
    engines: int = 2
    profile: str = "h100-llama3-8b"
    hop_s: float = 0.0005  # gateway <-> engine, one way
    pipeline_s: float = 0.002  # gateway: a variable ready -> its consumer queued
    client_rtt_s: float = 0.0  # client <-> service round trip (client-driven systems)
    router_hop_s: float = 0.0003  # smg's added latency, one way
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    policy: str = "parrot"
    smg_cache_threshold: float = 0.3
    smg_balance_abs: int = 64
    smg_balance_rel: float = 1.5


@dataclass
class ReqStat:
    app: str
    step: str
    kind: str
    ready: float  # inputs available (where the system sees it)
    sent: float = math.nan  # reached an engine
    first: float = math.nan  # first token at the engine
    done: float = math.nan
    engine: int = -1
    prompt: int = 0
    cached: int = 0


@dataclass
class AppStat:
    app: str
    kind: str
    arrival: float
    end: float = math.nan
    output_tokens: int = 0

    @property
    def latency(self) -> float:
        return self.end - self.arrival


@dataclass
class RunResult:
    system: str
    apps: list[AppStat]
    requests: list[ReqStat]
    busy_s: list[float]
    horizon: float

    def summary(self) -> dict[str, Any]:
        lat = [a.latency for a in self.apps]
        prompt = sum(r.prompt for r in self.requests)
        cached = sum(r.cached for r in self.requests)
        out: dict[str, Any] = {
            "apps": len(lat),
            "e2e_mean_s": round(sum(lat) / len(lat), 4) if lat else None,
            "e2e_p90_s": round(percentile(lat, 90), 4) if lat else None,
            "e2e_p99_s": round(percentile(lat, 99), 4) if lat else None,
            "cached_ratio": round(cached / prompt, 4) if prompt else None,
            "utilization": round(sum(self.busy_s) / (len(self.busy_s) * self.horizon), 4)
            if self.horizon > 0 else None,
        }
        kinds = sorted({a.kind for a in self.apps})
        if len(kinds) > 1:
            for k in kinds:
                ks = [a for a in self.apps if a.kind == k]
                kl = [a.latency for a in ks]
                entry: dict[str, Any] = {"apps": len(ks), "e2e_mean_s": round(sum(kl) / len(kl), 4),
                                         "e2e_p99_s": round(percentile(kl, 99), 4)}
                reqs = [r for r in self.requests if r.kind == k]
                ttft = [r.first - r.ready for r in reqs if not math.isnan(r.first)]
                if ttft:
                    entry["ttft_p50_s"] = round(percentile(ttft, 50), 4)
                    entry["ttft_p99_s"] = round(percentile(ttft, 99), 4)
                norm = [a.latency / max(1, a.output_tokens) for a in ks]
                entry["norm_p50_s"] = round(percentile(norm, 50), 5)
                out[k] = entry
        return out


class _EngineSlot:
    def __init__(self, idx: int, config: EngineConfig) -> None:
        self.idx = idx
        self.engine = Engine(config)
        self.stepping = False  # a step is scheduled or running
        self.busy = 0.0
        self.tree: set[int] = set()  # smg's approximate tree: block hashes routed here
        self.outstanding = 0  # smg's load count


class Simulation:
    """One system, one workload, virtual time. ``run()`` returns a RunResult."""

    def __init__(self, system: str, workload: Workload, config: SimConfig | None = None) -> None:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
        self.system = system
        self.cfg = cfg = config or SimConfig()
        profile = get_profile(cfg.profile)
        econf = EngineConfig(profile, profile.max_running_requests, profile.kv_capacity_tokens,
                             profile.chunked_prefill_size)
        self.slots = [_EngineSlot(i, econf) for i in range(cfg.engines)]
        self.workload = workload
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.apps: dict[str, AppStat] = {}
        self.reqs: dict[str, ReqStat] = {}
        self._outputs: dict[str, dict[str, tuple[int, ...]]] = {}
        self._pending: dict[str, dict[str, set[str]]] = {}  # app -> step -> missing inputs
        self._steps: dict[str, dict[str, Step]] = {}
        self._meta: dict[str, dict[str, Any]] = {}  # gateway: per job analysis
        self._rr = itertools.cycle(range(cfg.engines))
        self.policy: Policy | None = None
        if system in ("gateway", "gateway-plain"):
            self.policy = make_scheduler(cfg.policy, cfg.scheduler)  # type: ignore[arg-type]
            for s in self.slots:
                self.policy.add_engine(f"e{s.idx}", profile.max_running_requests,
                                       profile.kv_capacity_tokens, 0.0,
                                       chunk_tokens=profile.chunked_prefill_size)
        self._where: dict[str, int] = {}  # rid -> engine
        self._block = cfg.scheduler.block_tokens

    # -- event loop -------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def run(self) -> RunResult:
        for arr in self.workload.arrivals:
            self.at(arr.at_s, lambda a=arr.app, t=arr.at_s: self._arrive(a, t))
        while self._events:
            t, _, fn = heapq.heappop(self._events)
            self.now = t
            fn()
            if self.policy is not None:
                self._pump()
        horizon = max((a.end for a in self.apps.values()), default=0.0)
        return RunResult(self.system, list(self.apps.values()), list(self.reqs.values()),
                         [s.busy for s in self.slots], horizon)

    # -- applications -----------------------------------------------------------
    def _arrive(self, app: App, t: float) -> None:
        key = app.instance
        self.apps[key] = AppStat(key, app.kind, t, output_tokens=app.output_tokens)
        self._outputs[key] = {}
        self._steps[key] = {s.name: s for s in app.steps}
        names = {s.name for s in app.steps}
        self._pending[key] = {s.name: {i for i in s.inputs if i in names} for s in app.steps}
        self._finals_left = getattr(self, "_finals_left", {})
        self._finals_left[key] = set(app.finals)
        if self.system == "gateway":
            self._analyse(app, t)
            delay = self.cfg.client_rtt_s / 2  # one submission burst reaches the gateway
        else:
            delay = 0.0
        for s in app.steps:
            if not self._pending[key][s.name]:
                self.at(t + delay, lambda k=key, n=s.name: self._ready(k, n))

    def _analyse(self, app: App, t: float) -> None:
        """What the gateway's session analysis knows of each step (the whole DAG)."""
        g = SessionGraph()
        for s in app.steps:
            g.add(Node(s.name, tuple(s.inputs), s.name, criteria=s.criteria,  # type: ignore[arg-type]
                       prompt_tokens=0, max_tokens=s.max_tokens))
        objectives = g.deduce_objectives()
        groups = g.task_groups()
        after = g.downstream()
        for s in app.steps:
            self._meta[f"{app.instance}/{s.name}"] = {
                "latency": objectives[s.name] == "latency",
                "group": f"{app.instance}/{groups[s.name]}" if s.name in groups else None,
                "app_started": t,
                "downstream_s": after[s.name],
            }

    def _ready(self, app: str, step: str) -> None:
        """Inputs exist where the orchestrator is; send (client) or queue (gateway)."""
        s = self._steps[app][step]
        rid = f"{app}/{step}"
        kind = self.apps[app].kind if s.stage != "chat" else "chat"
        ids = prompt_ids(s, self._outputs[app])
        stat = ReqStat(app, step, kind, self.now, prompt=len(ids))
        self.reqs[rid] = stat
        self._ids = getattr(self, "_ids", {})
        self._ids[rid] = ids
        if self.system == "gateway":
            self.at(self.now + self.cfg.pipeline_s, lambda: self._submit_job(rid, s, True))
        elif self.system == "gateway-plain":
            self.at(self.now + self.cfg.client_rtt_s / 2 + self.cfg.hop_s,
                    lambda: self._submit_job(rid, s, False))
        else:
            extra = self.cfg.router_hop_s if self.system == "smg" else 0.0
            self.at(self.now + self.cfg.client_rtt_s / 2 + extra, lambda: self._route(rid, s))

    # -- gateway ----------------------------------------------------------------
    def _submit_job(self, rid: str, step: Step, semantic: bool) -> None:
        assert self.policy is not None
        ids = self._ids[rid]
        meta = self._meta.get(rid, {}) if semantic else {}
        app = self.reqs[rid].app
        job = Job(
            id=rid,
            tenant=self._tenant(app),
            prompt_tokens=len(ids),
            max_tokens=step.max_tokens,
            latency_critical=meta.get("latency", True),
            group=meta.get("group"),
            session=app if semantic else None,
            app_started=meta.get("app_started"),
            downstream_s=meta.get("downstream_s", 0.0),
            prefix_hashes=tuple(block_hashes(ids, self._block)),
        )
        self.policy.submit(job, self.now)

    def _tenant(self, app: str) -> str:
        for arr in self.workload.arrivals:
            if arr.app.instance == app:
                return arr.app.tenant
        return "default"

    def _pump(self) -> None:
        assert self.policy is not None
        for d in self.policy.schedule(self.now):
            idx = int(d.engine[1:])
            self.at(self.now + self.cfg.hop_s, lambda r=d.job_id, i=idx, p=d.priority: self._send(r, i, p))

    # -- client-side routers ----------------------------------------------------
    def _route(self, rid: str, step: Step) -> None:
        if self.system == "baseline":
            idx = next(self._rr)
        else:
            idx = self._smg_pick(self._ids[rid])
        self._send(rid, idx, 0)

    def _smg_pick(self, ids: Sequence[int]) -> int:
        cfg = self.cfg
        loads = [s.outstanding for s in self.slots]
        lo, hi = min(loads), max(loads)
        if hi - lo > cfg.smg_balance_abs and hi > lo * cfg.smg_balance_rel:
            return loads.index(lo)
        hashes = block_hashes(ids, 8)
        best, best_match = 0, -1
        for s in self.slots:
            m = 0
            while m < len(hashes) and hashes[m] in s.tree:
                m += 1
            if m > best_match:
                best, best_match = s.idx, m
        if hashes and best_match / len(hashes) > cfg.smg_cache_threshold:
            return best
        return min(self.slots, key=lambda s: (len(s.tree), s.idx)).idx

    # -- engines ----------------------------------------------------------------
    def _send(self, rid: str, idx: int, priority: int) -> None:
        slot = self.slots[idx]
        stat = self.reqs[rid]
        step = self._steps[stat.app][stat.step]
        ids = self._ids[rid]
        out = tuple(_output_ids(rid, step.max_tokens))
        slot.engine.add(EngineRequest(rid, ids, out, priority), self.now)
        stat.sent, stat.engine = self.now, idx
        self._where[rid] = idx
        slot.outstanding += 1
        if self.system == "smg":
            slot.tree.update(block_hashes(ids, 8))
        self._kick(slot)

    def _kick(self, slot: _EngineSlot) -> None:
        if not slot.stepping and slot.engine.has_work:
            slot.stepping = True
            self.at(self.now, lambda: self._step(slot))

    def _step(self, slot: _EngineSlot) -> None:
        res = slot.engine.step(self.now)
        slot.busy += res.duration
        end = self.now + res.duration

        def deliver() -> None:
            for ev in res.events:
                self._on_event(slot, ev)
            if slot.engine.has_work:
                self._step(slot)
            else:
                slot.stepping = False

        self.at(end, deliver)

    def _on_event(self, slot: _EngineSlot, ev: Event) -> None:
        stat = self.reqs[ev.rid]
        if ev.kind in ("first_token", "finished") and math.isnan(stat.first):
            stat.first = self.now
            if self.policy is not None:
                rid = ev.rid
                self.at(self.now + self.cfg.hop_s, lambda: self.policy.on_prefill_done(rid, self.now))  # type: ignore[union-attr]
        if ev.kind == "finished":
            stat.done, stat.cached = self.now, ev.cached_tokens
            slot.outstanding -= 1
            out = tuple(_output_ids(ev.rid, self._steps[stat.app][stat.step].max_tokens))
            if self.policy is not None:
                rid, cached = ev.rid, ev.cached_tokens
                self.at(self.now + self.cfg.hop_s,
                        lambda: self.policy.on_finish(rid, self.now, cached_tokens=cached))  # type: ignore[union-attr]
            back = self.cfg.hop_s if self.system == "gateway" else self.cfg.client_rtt_s / 2 + (
                self.cfg.router_hop_s if self.system == "smg" else 0.0)
            self.at(self.now + back, lambda: self._output(stat.app, stat.step, out))

    def _output(self, app: str, step: str, out: tuple[int, ...]) -> None:
        self._outputs[app][step] = out
        pending = self._pending[app]
        for name, missing in pending.items():
            if step in missing:
                missing.discard(step)
                if not missing:
                    self._ready(app, name) if self.system != "gateway" else self.at(
                        self.now, lambda n=name: self._ready(app, n))
        left = self._finals_left[app]
        left.discard(step)
        if not left:
            back = self.cfg.client_rtt_s / 2 if self.system == "gateway" else 0.0
            self.apps[app].end = self.now + back


def _output_ids(rid: str, n: int) -> list[int]:
    """Distinct, deterministic generated ids per request (word-range ids)."""
    rng = random.Random(rid)
    return [rng.randrange(1000, 60000) for _ in range(n)]


def run_systems(workload: Workload, systems: Sequence[str] = SYSTEMS,
                config: SimConfig | None = None) -> dict[str, dict[str, Any]]:
    """Every system on the same workload; summaries by system."""
    return {s: Simulation(s, workload, config).run().summary() for s in systems}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policy_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload")
    p.add_argument("--size", default="small")
    p.add_argument("--apps", type=int, default=30)
    p.add_argument("--rate", type=float, nargs="+", default=[2.0])
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--client-rtt-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = SimConfig(engines=args.engines, client_rtt_s=args.client_rtt_ms / 1000)
    for rate in args.rate:
        wl = build_workload(args.workload, args.size, args.seed, args.apps, rate)
        res = run_systems(wl, [s for s in args.systems.split(",") if s], cfg)
        print(f"{args.workload} {args.size} rate {rate:g} apps/s ({len(wl.apps)} apps):")
        for name, summ in res.items():
            print(f"  {name:14s} {summ}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
