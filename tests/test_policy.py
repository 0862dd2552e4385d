"""Scripted event sequences against the scheduling policies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from analysis.prefix import block_hashes
from gateway.policy import (
    Dispatch,
    Job,
    LeastLoadedPolicy,
    RoundRobinPolicy,
    Scheduler,
    SchedulerConfig,
    make_scheduler,
)

BLOCK = 32


def prompt(prefix_id: int, prefix_len: int, suffix_id: int, suffix_len: int = 64) -> list[int]:
    """Prompt = shared prefix (seeded by prefix_id) + unique suffix."""
    base = 1_000_000 * (prefix_id + 1)
    suffix = 500_000_000 + 10_000 * suffix_id
    return list(range(base, base + prefix_len)) + list(range(suffix, suffix + suffix_len))


def job(jid: str, tenant: str = "t", p: list[int] | None = None, **kw: object) -> Job:
    args: dict = dict(max_tokens=50, latency_critical=True)
    args.update(kw)
    tokens = p if p is not None else prompt(hash(jid) % 997, 64, 0)
    return Job(jid, tenant, len(tokens), prefix_hashes=tuple(block_hashes(tokens, BLOCK)), **args)


def sched(engines: int = 2, capacity: int = 8, **cfg: object) -> Scheduler:
    s = Scheduler(SchedulerConfig(**cfg))  # type: ignore[arg-type]
    for i in range(engines):
        s.add_engine(f"e{i}", capacity, None, now=0.0)
    return s


def dispatches(decisions: list) -> list[Dispatch]:
    assert all(isinstance(d, Dispatch) for d in decisions)
    return decisions


def test_latency_jobs_go_first_with_higher_priority() -> None:
    s = sched(engines=1, capacity=2)
    s.submit(job("bulk1", latency_critical=False), 0)
    s.submit(job("bulk2", latency_critical=False), 0)
    s.submit(job("chat", latency_critical=True), 0)
    out = dispatches(s.schedule(0))
    assert [d.job_id for d in out] == ["chat", "bulk1"]
    assert out[0].priority > out[1].priority
    cfg = SchedulerConfig()
    assert (out[0].priority, out[1].priority) == (cfg.priority_latency, cfg.priority_throughput)


def test_throughput_leaves_reserve_slots_for_latency() -> None:
    s = sched(engines=1, capacity=8)
    for i in range(20):
        s.submit(job(f"b{i}", latency_critical=False), 0)
    assert len(s.schedule(0)) == 7  # one slot of eight kept for latency work
    s.submit(job("chat"), 1)
    assert [d.job_id for d in s.schedule(1)] == ["chat"]


def test_capacity_never_exceeded_under_random_events() -> None:
    rng = random.Random(7)
    s = sched(engines=3, capacity=4)
    inflight: dict[str, str] = {}
    n = 0
    for step in range(400):
        now = float(step)
        for _ in range(rng.randint(0, 4)):
            n += 1
            pfx = rng.randint(0, 3)
            s.submit(
                job(f"j{n}", rng.choice("abc"), prompt(pfx, rng.choice([64, 400]), n),
                    latency_critical=rng.random() < 0.5, group=rng.choice([None, "g1", "g2"])),
                now,
            )
        for d in s.schedule(now):
            assert isinstance(d, Dispatch)
            inflight[d.job_id] = d.engine
        counts = Counter(inflight.values())
        assert all(c <= 4 for c in counts.values()), counts
        for jid in list(inflight):
            r = rng.random()
            if r < 0.3:
                s.on_prefill_done(jid, now)
            elif r < 0.6:
                del inflight[jid]
                s.on_finish(jid, now, cached_tokens=0, ok=rng.random() < 0.9)
    st = s.stats()
    assert all(e["inflight"] <= e["capacity"] for e in st["engines"].values())
    # drain: once everything has finished no prefill backlog is left behind
    now = 400.0
    while inflight:
        for jid in list(inflight):
            del inflight[jid]
            s.on_finish(jid, now, cached_tokens=0)
        for d in s.schedule(now):
            inflight[d.job_id] = d.engine
        now += 1
    engines = s._engines.engines  # noqa: SLF001 - white-box check of the bookkeeping
    assert all(e.backlog == pytest.approx(0.0, abs=1e-9) for e in engines.values())
    assert all(e.prefilling == e.prefilling_latency == 0 for e in engines.values())
    assert (s.stats()["inflight"], s.stats()["queued"], s.stats()["held"]) == (0, 0, 0)


def test_group_members_dispatched_together_and_spread() -> None:
    s = sched(engines=4, capacity=8)
    s.submit(job("solo1", p=prompt(1, 64, 1)), 0)
    for i in range(8):
        s.submit(job(f"map{i}", p=prompt(100 + i, 1024, i), group="stage1",
                     latency_critical=False), 0)
    s.submit(job("solo2", p=prompt(2, 64, 2)), 0)
    out = dispatches(s.schedule(0))
    ids = [d.job_id for d in out]
    maps = [i for i, j in enumerate(ids) if j.startswith("map")]
    assert len(maps) == 8 and maps == list(range(maps[0], maps[0] + 8))  # contiguous
    per_engine = Counter(d.engine for d in out if d.job_id.startswith("map"))
    # spread over every engine; one may take a third where it already holds their shared
    # prefix rather than delay a chat's first token (the solos wait on e0 and e1)
    assert len(per_engine) == 4 and max(per_engine.values()) <= 3


def test_a_burst_of_chats_is_not_stacked_into_one_prefill_pass() -> None:
    """Chats that reach an engine together get their first tokens when the whole prefill
    pass ends: stacking a burst on the idle engine delays every one of them, so past a
    few the rest go to the engine that is decoding (stalling its batch once)."""
    s = sched(capacity=32)
    for i in range(4):  # e0 decodes four chats
        s.submit(job(f"old{i}", p=prompt(10 + i, 1024, i), max_tokens=128, pin_engine="e0"), 0)
    for d in dispatches(s.schedule(0)):
        s.on_prefill_done(d.job_id, 0.1)
    for i in range(8):
        s.submit(job(f"new{i}", p=prompt(20 + i, 1024, i), max_tokens=128), 1)
    per_engine = Counter(d.engine for d in dispatches(s.schedule(1)))
    assert sum(per_engine.values()) == 8
    assert 4 <= per_engine["e1"] <= 6  # most on the idle engine, not all eight


def test_group_spread_balances_unequal_work() -> None:
    s = sched(engines=2, capacity=8)
    sizes = [4000, 500, 500, 500, 500, 500, 500, 500, 500]
    for i, n in enumerate(sizes):
        s.submit(job(f"m{i}", p=prompt(200 + i, n, i), group="g", max_tokens=100), 0)
    out = dispatches(s.schedule(0))
    big = next(d.engine for d in out if d.job_id == "m0")
    others = Counter(d.engine for d in out if d.job_id != "m0")
    assert others[big] < others[[e for e in ("e0", "e1") if e != big][0]]


def test_prefix_affinity_picks_engine_holding_prefix() -> None:
    s = sched(engines=4)
    s.submit(job("first", p=prompt(5, 1024, 1)), 0)
    (d1,) = dispatches(s.schedule(0))
    s.on_prefill_done("first", 0.1)
    s.on_finish("first", 1, cached_tokens=0)
    s.submit(job("other", p=prompt(6, 1024, 1)), 1)  # unrelated: least loaded
    s.submit(job("second", p=prompt(5, 1024, 2)), 1)
    out = {d.job_id: d for d in dispatches(s.schedule(1))}
    assert out["second"].engine == d1.engine
    assert out["second"].expected_cached_tokens == 1024
    assert out["other"].expected_cached_tokens == 0


def test_imbalance_thresholds_are_a_hard_override() -> None:
    # 4-token answers behind a 4,000-token prefix: the cost score alone would keep
    # every job on the hot engine; the thresholds (gap > 4 and ratio > 1.5) cut in.
    s = sched(engines=2, capacity=100, balance_abs_threshold=4, balance_rel_threshold=1.5)
    s.submit(job("seed", p=prompt(9, 4000, 0), max_tokens=4), 0)
    (d,) = dispatches(s.schedule(0))
    s.on_prefill_done("seed", 0)
    hot = d.engine
    for i in range(1, 12):
        s.submit(job(f"s{i}", p=prompt(9, 4000, i), max_tokens=4), 1)
    out = dispatches(s.schedule(1))
    assert [x.engine == hot for x in out[:5]] == [True, True, True, True, False]
    loads = [e["inflight"] + e["reserved"] for e in s.stats()["engines"].values()]
    assert sum(loads) == 12 and max(loads) - min(loads) <= 5
    # without the override the same jobs all stay on the hot engine
    s2 = sched(engines=2, capacity=100)
    s2.submit(job("seed", p=prompt(9, 4000, 0), max_tokens=4), 0)
    (d2,) = dispatches(s2.schedule(0))
    s2.on_prefill_done("seed", 0)
    for i in range(1, 12):
        s2.submit(job(f"s{i}", p=prompt(9, 4000, i), max_tokens=4), 1)
    assert {x.engine for x in dispatches(s2.schedule(1))} == {d2.engine}


def test_cost_spreads_long_outputs_over_a_shared_prefix() -> None:
    # The multi-agent round: 8 branches of a 4,000-token prefix, 500-token outputs.
    s = sched(engines=2, capacity=16)
    for i in range(8):
        s.submit(job(f"b{i}", p=prompt(11, 4000, i), max_tokens=500), 0)
    first = dispatches(s.schedule(0))
    leaders = [d for d in first if d.expected_cached_tokens == 0]
    assert len(leaders) == 2 and {d.engine for d in leaders} == {"e0", "e1"}
    assert s.stats()["held"] == 8 - len(first)
    placed = {d.job_id: d for d in first}
    for d in leaders:
        s.on_prefill_done(d.job_id, 0.2)
    for d in dispatches(s.schedule(0.2)):
        placed[d.job_id] = d
    assert len(placed) == 8
    assert sorted(Counter(d.engine for d in placed.values()).values()) == [4, 4]
    # each engine computes the prefix once; everyone else reuses it
    assert sum(d.expected_cached_tokens == 0 for d in placed.values()) == 2


def test_cost_spreads_grouped_branches_too() -> None:
    s = sched(engines=2, capacity=16)
    for i in range(8):
        s.submit(job(f"b{i}", p=prompt(12, 4000, i), max_tokens=500, group="round1"), 0)
    placed = {d.job_id: d for d in dispatches(s.schedule(0))}
    for d in list(placed.values()):
        s.on_prefill_done(d.job_id, 0.2)
    for d in dispatches(s.schedule(0.2)):
        placed[d.job_id] = d
    assert sorted(Counter(d.engine for d in placed.values()).values()) == [4, 4]
    assert sum(d.expected_cached_tokens == 0 for d in placed.values()) == 2


def test_short_outputs_stay_with_their_prefix() -> None:
    # 32 jobs of a 3,000-token prefix with 4-token outputs over 4 roomy engines:
    # recomputing the prefix costs far more than a bigger batch, so one engine.
    s = sched(engines=4, capacity=64)
    for i in range(32):
        s.submit(job(f"q{i}", p=prompt(13, 3000, i), max_tokens=4), 0)
    placed = {d.job_id: d for d in dispatches(s.schedule(0))}
    (lead,) = placed.values()
    s.on_prefill_done(lead.job_id, 0.1)
    for d in dispatches(s.schedule(0.1)):
        placed[d.job_id] = d
    assert len(placed) == 32 and {d.engine for d in placed.values()} == {lead.engine}


def test_unrelated_jobs_spread_by_load() -> None:
    s = sched(engines=4, capacity=16)
    for i in range(16):
        s.submit(job(f"u{i}", p=prompt(300 + i, 2000, i), max_tokens=200), 0)
    out = dispatches(s.schedule(0))
    assert len(out) == 16
    assert sorted(Counter(d.engine for d in out).values()) == [4, 4, 4, 4]


def test_prefill_backlog_tracked_and_released() -> None:
    s = sched(engines=2, capacity=8)
    s.submit(job("a", p=prompt(14, 1000, 0)), 0)
    s.submit(job("b", p=prompt(15, 100, 0)), 0)
    s.submit(job("c", p=prompt(16, 100, 0)), 0)
    out = {d.job_id: d for d in dispatches(s.schedule(0))}
    engines = s._engines.engines  # noqa: SLF001 - white-box check of the bookkeeping
    cp = s.config.cost_prefill_token
    total = sum(e.backlog for e in engines.values())
    assert total == pytest.approx((1064 + 164 + 164) * cp)
    s.on_prefill_done("a", 0.1)
    assert engines[out["a"].engine].backlog == pytest.approx(
        164 * cp * sum(out[j].engine == out["a"].engine for j in "bc"))
    s.on_finish("b", 0.2, ok=False)
    assert s.cancel("c", 0.2)
    assert all(e.backlog == pytest.approx(0.0) for e in engines.values())
    s.on_finish("a", 0.3)
    assert s.remove_engine("e1", 0.3) == []


def test_warmup_leader_then_followers_on_prefill_done() -> None:
    s = sched(engines=2, capacity=8)
    for i in range(4):
        s.submit(job(f"w{i}", p=prompt(3, 2000, i)), 0)
    out = dispatches(s.schedule(0))
    assert [d.job_id for d in out] == ["w0"]
    assert s.stats()["held"] == 3
    assert s.schedule(0.05) == []
    s.on_prefill_done("w0", 0.1)
    out2 = dispatches(s.schedule(0.1))
    assert sorted(d.job_id for d in out2) == ["w1", "w2", "w3"]
    assert {d.engine for d in out2} == {out[0].engine}
    assert all(d.expected_cached_tokens == 2000 // BLOCK * BLOCK for d in out2)


def test_warmup_not_for_short_prefixes() -> None:
    s = sched(engines=2, capacity=8)
    for i in range(4):
        s.submit(job(f"w{i}", p=prompt(3, 128, i)), 0)
    assert len(s.schedule(0)) == 4


@pytest.mark.parametrize("how", ["fail", "cancel", "remove_engine", "timeout"])
def test_leader_failure_releases_followers(how: str) -> None:
    s = sched(engines=2, capacity=8, warmup_timeout_s=5.0)
    for i in range(3):
        s.submit(job(f"w{i}", p=prompt(4, 4000, i)), 0)
    (lead,) = dispatches(s.schedule(0))
    now = 1.0
    if how == "fail":
        s.on_finish(lead.job_id, now, ok=False)
    elif how == "cancel":
        assert s.cancel(lead.job_id, now)
    elif how == "remove_engine":
        assert s.remove_engine(lead.engine, now) == [lead.job_id]
    else:
        now = 6.0
    out = dispatches(s.schedule(now))
    released = {"w1", "w2"}
    if how == "timeout":
        assert {d.job_id for d in out} == released
    else:
        # one follower becomes the new leader, the other waits for it
        assert len(out) == 1 and out[0].job_id in released
        s.on_prefill_done(out[0].job_id, now + 1)
        rest = dispatches(s.schedule(now + 1))
        assert {d.job_id for d in rest} == released - {out[0].job_id}
    assert s.stats()["held"] == 0


def test_cancel_queued_and_held_jobs() -> None:
    s = sched(engines=1, capacity=1)
    s.submit(job("a"), 0)
    s.submit(job("b"), 0)
    assert s.cancel("b", 0)
    assert not s.cancel("nope", 0)
    assert [d.job_id for d in s.schedule(0)] == ["a"]
    s.on_finish("a", 1)
    assert s.schedule(1) == []
    s2 = sched(engines=1, capacity=4)
    for i in range(3):
        s2.submit(job(f"w{i}", p=prompt(4, 1000, i)), 0)
    s2.schedule(0)
    assert s2.cancel("w1", 0)
    s2.on_prefill_done("w0", 1)
    assert [d.job_id for d in s2.schedule(1)] == ["w2"]


def test_fair_shares_between_weighted_tenants() -> None:
    s = sched(engines=2, capacity=4)
    for i in range(200):
        s.submit(job(f"a{i}", "a", prompt(10_000 + i, 64, 0), weight=3.0), 0)
        s.submit(job(f"b{i}", "b", prompt(20_000 + i, 64, 0), weight=1.0), 0)
    counts: Counter[str] = Counter()
    inflight: list[str] = []
    for step in range(25):
        for d in dispatches(s.schedule(float(step))):
            counts[d.job_id[0]] += 1
            inflight.append(d.job_id)
        for jid in inflight:
            s.on_finish(jid, float(step) + 0.5)
        inflight.clear()
    total = counts["a"] + counts["b"]
    assert total == 200
    assert 0.70 <= counts["a"] / total <= 0.80  # weight 3:1 -> 75 %


def test_chat_not_starved_by_other_tenants_batch() -> None:
    s = sched(engines=1, capacity=4)
    for i in range(1000):
        s.submit(job(f"batch{i}", "bulk", prompt(30_000 + i, 64, 0)), 0)
    first = dispatches(s.schedule(0))
    for d in first:
        s.on_finish(d.job_id, 1)
    s.submit(job("chat", "chatty", prompt(7, 64, 0)), 1)
    assert "chat" in [d.job_id for d in s.schedule(1)][:2]


def test_throughput_aging_prevents_starvation() -> None:
    s = sched(engines=1, capacity=1, max_wait_s=10)
    s.submit(job("bulk", latency_critical=False), 0)
    t = 0.0
    got = []
    for i in range(40):
        s.submit(job(f"c{i}", "chat"), t)
        s.submit(job(f"c{i}b", "chat"), t)  # latency work never runs dry
        for d in dispatches(s.schedule(t)):
            got.append(d)
            s.on_finish(d.job_id, t + 0.5)
        t += 1.0
    bulk = [d for d in got if d.job_id == "bulk"]
    assert bulk and bulk[0].priority == SchedulerConfig().priority_aged


def test_avoid_and_pin_honoured() -> None:
    s = sched(engines=3, capacity=4)
    for i in range(6):
        s.submit(job(f"r{i}", avoid=frozenset({"e0", "e1"})), 0)
    assert {d.engine for d in dispatches(s.schedule(0))} == {"e2"}
    s.submit(job("pinned", pin_engine="e1"), 0)
    assert [d.engine for d in s.schedule(0)] == ["e1"]
    # avoiding every engine is ignored rather than waiting forever
    s1 = sched(engines=1)
    s1.submit(job("retry", avoid=frozenset({"e0"})), 0)
    assert [d.engine for d in s1.schedule(0)] == ["e0"]


def test_remove_engine_and_health() -> None:
    s = sched(engines=2, capacity=2)
    s.set_healthy("e0", False, 0)
    for i in range(3):
        s.submit(job(f"j{i}"), 0)
    out = dispatches(s.schedule(0))
    assert {d.engine for d in out} == {"e1"} and len(out) == 2
    assert sorted(s.remove_engine("e1", 1)) == sorted(d.job_id for d in out)
    s.set_healthy("e0", True, 1)
    assert [d.engine for d in s.schedule(1)] == ["e0"]
    assert s.stats()["inflight"] == 1


def test_on_load_counts_external_requests() -> None:
    s = sched(engines=2, capacity=8)
    s.on_load("e0", num_reqs=30, num_waiting=5, num_tokens=10_000, now=0)
    s.submit(job("x"), 0)
    assert [d.engine for d in s.schedule(0)] == ["e1"]


def _simulate(policy_name: str, n_jobs: int = 32, engines: int = 4, prefix: int = 3000) -> int:
    """Tiny event simulation with a true per-engine prefix cache.

    Prefill finishes 0.1 s after dispatch, the job 1 s after. Returns the
    prefix tokens engines had to compute (ideal: ``prefix`` per engine used).
    """
    s = make_scheduler(policy_name, SchedulerConfig())  # type: ignore[arg-type]
    for i in range(engines):
        s.add_engine(f"e{i}", 4, None, 0.0)
    cache: dict[str, set[int]] = {f"e{i}": set() for i in range(engines)}
    tokens = {}
    for i in range(n_jobs):
        tokens[f"q{i}"] = prompt(42, prefix, i)
        s.submit(job(f"q{i}", p=tokens[f"q{i}"]), 0.0)
    events: list[tuple[float, str, str]] = []
    computed = 0
    now = 0.0
    while True:
        for d in s.schedule(now):
            assert isinstance(d, Dispatch)
            hashes = block_hashes(tokens[d.job_id][:prefix], BLOCK)
            have = cache[d.engine]
            hit = 0
            while hit < len(hashes) and hashes[hit] in have:
                hit += 1
            computed += (len(hashes) - hit) * BLOCK
            events.append((now + 0.1, "prefill", d.job_id))
            events.append((now + 1.0, "finish", d.job_id))
            events.append((now + 0.1, "cache", d.engine + "|" + d.job_id))
        if not events:
            break
        events.sort()
        now = events[0][0]
        while events and events[0][0] == now:
            _, kind, arg = events.pop(0)
            if kind == "prefill":
                s.on_prefill_done(arg, now)
            elif kind == "finish":
                s.on_finish(arg, now, cached_tokens=None)
            else:
                eng, jid = arg.split("|")
                cache[eng].update(block_hashes(tokens[jid][:prefix], BLOCK))
    return computed


def test_shared_prefix_at_scale_near_ideal_vs_round_robin() -> None:
    parrot = _simulate("parrot")
    rr = _simulate("round_robin")
    ll = _simulate("least_loaded")
    prefix_blocks_tokens = (3000 // BLOCK) * BLOCK
    assert parrot <= 4 * prefix_blocks_tokens  # at most one prefix prefill per engine
    assert rr >= 4 * parrot and ll >= 4 * parrot


def test_make_scheduler_and_baselines() -> None:
    assert isinstance(make_scheduler("parrot"), Scheduler)
    rr = make_scheduler("round_robin")
    assert isinstance(rr, RoundRobinPolicy)
    assert isinstance(make_scheduler("least_loaded"), LeastLoadedPolicy)
    with pytest.raises(ValueError):
        make_scheduler("nope")  # type: ignore[arg-type]
    for i in range(3):
        rr.add_engine(f"e{i}", 2, None, 0)
    for i in range(7):
        rr.submit(job(f"j{i}"), 0)
    out = rr.schedule(0)
    assert [d.engine for d in out] == ["e0", "e1", "e2", "e0", "e1", "e2"]
    assert rr.stats()["queued"] == 1


def test_older_applications_get_higher_priority_within_a_class() -> None:
    """A late step of an application that started earlier outranks the first steps of
    applications that started later, so the engine's queue runs it first."""
    s = Scheduler(SchedulerConfig())
    s.add_engine("e0", 64, None, 0.0)
    s.submit(Job("new-map", "t", 3, 8, True, app_started=9.75), 10.0)
    s.submit(Job("old-reduce", "t", 3, 8, True, app_started=2.0), 10.0)
    s.submit(Job("plain", "t", 3, 8, True), 10.0)
    prio = {d.job_id: d.priority for d in s.schedule(10.0) if isinstance(d, Dispatch)}
    cfg = SchedulerConfig()
    assert prio["old-reduce"] == cfg.priority_latency + 80  # 8 s x 10 per s
    assert prio["new-map"] == cfg.priority_latency + 2
    assert prio["plain"] == cfg.priority_latency
    s.submit(Job("ancient", "t", 1, 8, True, app_started=-1e6), 10.0)
    s.submit(Job("bulk", "t", 1, 8, False, app_started=-1e6), 10.0)
    prio = {d.job_id: d.priority for d in s.schedule(10.0) if isinstance(d, Dispatch)}
    assert prio["ancient"] == cfg.priority_latency + cfg.age_priority_cap
    assert prio["bulk"] < cfg.priority_aged <= cfg.priority_latency  # classes never overlap
