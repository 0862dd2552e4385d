"""Gateway-side admission (gateway/policy/admission.py) through the Scheduler: scripted events."""

from __future__ import annotations

from analysis.prefix import block_hashes
from gateway.policy import Job, Scheduler, SchedulerConfig

CHUNK = 1000


def tokens(seed: int, n: int) -> list[int]:
    base = 1_000_000 * (seed + 1)
    return list(range(base, base + n))


def job(jid: str, n: int = 400, *, seed: int | None = None, latency: bool = True,
        app: str | None = None, started: float | None = None, out: int = 20, **kw: object) -> Job:
    toks = tokens(seed if seed is not None else abs(hash(jid)) % 10_000, n)
    return Job(jid, kw.pop("tenant", "t"), len(toks), out, latency, session=app,  # type: ignore[arg-type]
               app_started=started, prefix_hashes=tuple(block_hashes(toks, 32)), **kw)  # type: ignore[arg-type]


def sched(engines: int = 1, capacity: int = 64, **cfg: object) -> Scheduler:
    s = Scheduler(SchedulerConfig(**cfg))  # type: ignore[arg-type]
    for i in range(engines):
        s.add_engine(f"e{i}", capacity, None, 0.0, chunk_tokens=CHUNK)
    return s


def ids(decisions: list) -> list[str]:
    return [d.job_id for d in decisions]


def test_prefill_budget_holds_throughput_prefill_beyond_a_chunk() -> None:
    s = sched()
    for i in range(4):
        s.submit(job(f"b{i}", 400, latency=False), 0.0)
    first = ids(s.schedule(0.0))
    assert first == ["b0", "b1"]  # 2 x 400 tokens fit one 1,000-token chunk, the third waits
    assert s.stats()["admission_refusals"]["prefill_budget"] >= 1
    s.on_prefill_done("b0", 0.05)
    assert ids(s.schedule(0.05)) == ["b2"]
    s.on_prefill_done("b1", 0.06)
    s.on_prefill_done("b2", 0.06)
    assert ids(s.schedule(0.06)) == ["b3"]


def test_latency_work_is_not_held_behind_throughput_backlog() -> None:
    s = sched()
    s.submit(job("bulk0", 900, latency=False), 0.0)
    s.submit(job("bulk1", 900, latency=False), 0.0)
    assert ids(s.schedule(0.0)) == ["bulk0"]
    s.submit(job("chat", 300), 0.01)
    out = s.schedule(0.01)
    assert ids(out) == ["chat"]  # the throughput backlog does not count against it
    assert out[0].priority > SchedulerConfig().priority_throughput


def test_a_single_job_larger_than_the_budget_still_runs() -> None:
    s = sched()
    s.submit(job("huge", 5 * CHUNK, latency=False), 0.0)
    assert ids(s.schedule(0.0)) == ["huge"]


def test_older_application_goes_first_within_a_tenant() -> None:
    s = sched(capacity=1)
    s.submit(job("new-map", app="new", started=9.0), 10.0)
    s.submit(job("old-reduce", app="old", started=1.0), 10.0)
    s.submit(job("plain"), 10.0)
    assert ids(s.schedule(10.0)) == ["old-reduce"]


def test_more_downstream_work_first_inside_an_application() -> None:
    s = sched(capacity=1)
    s.submit(job("leaf", app="a", started=0.0, downstream_s=0.0), 1.0)
    s.submit(job("on-path", app="a", started=0.0, downstream_s=3.0), 1.0)
    assert ids(s.schedule(1.0)) == ["on-path"]


def test_application_window_engages_only_when_prefill_dominates() -> None:
    # Prefill-heavy: 900-token prompts sent back to back push the duty estimate up.
    s = sched(app_window=2, app_window_duty=0.5, prefill_s_per_token=1e-2, prefill_budget_chunks=50,
              latency_budget_chunks=50)
    for a in range(3):
        s.submit(job(f"a{a}", 900, app=f"app{a}", started=float(a)), 3.0)
    out = ids(s.schedule(3.0))
    assert out == ["a0", "a1"]  # the third application waits for a slot in the window
    assert s.stats()["admission_refusals"]["app_window"] >= 1
    s.on_prefill_done("a0", 3.1)
    s.on_finish("a0", 3.2)
    assert ids(s.schedule(3.2)) == ["a2"]
    # Decode-bound (tiny prefills, slow clock): no window at all.
    d = sched(app_window=2, app_window_duty=0.5, prefill_s_per_token=1e-6)
    for a in range(5):
        d.submit(job(f"d{a}", 40, app=f"app{a}", started=float(a)), 3.0)
    assert len(d.schedule(3.0)) == 5


def test_requests_of_an_admitted_application_are_not_windowed() -> None:
    s = sched(app_window=1, prefill_s_per_token=1e-2, prefill_budget_chunks=50,
              latency_budget_chunks=50)
    s.submit(job("x1", 900, app="x", started=0.0), 1.0)
    s.submit(job("y1", 900, app="y", started=0.5), 1.0)
    assert ids(s.schedule(1.0)) == ["x1"]
    s.submit(job("x2", 900, app="x", started=0.0), 1.1)
    assert ids(s.schedule(1.1)) == ["x2"]  # x already runs here


def test_latency_protection_sends_heavy_batch_prefill_elsewhere() -> None:
    s = sched(engines=2, protect_duty=0.0, prefill_budget_chunks=50)
    s.submit(job("chat", 200, out=300), 0.0)
    (chat,) = s.schedule(0.0)
    s.on_prefill_done("chat", 0.02)
    for i in range(3):
        s.submit(job(f"map{i}", 900, latency=False), 0.1)
    s.submit(job("tiny", 100, latency=False), 0.1)
    out = {d.job_id: d.engine for d in s.schedule(0.1)}
    other = "e1" if chat.engine == "e0" else "e0"
    assert all(out[f"map{i}"] == other for i in range(3))
    assert s.stats()["engines"][chat.engine]["protected"]
    assert "tiny" in out  # small prefills may still use the protected engine
    s.on_finish("chat", 0.5)
    s.submit(job("late-map", 900, latency=False), 0.5)
    assert {d.job_id for d in s.schedule(0.5)} == {"late-map"}


def test_protection_yields_while_the_engine_has_prefill_duty_to_spare() -> None:
    s = sched(engines=1, protect_duty=0.9, prefill_s_per_token=1e-6)
    s.submit(job("chat", 200, out=300), 0.0)
    s.schedule(0.0)
    s.on_prefill_done("chat", 0.02)
    s.submit(job("map", 900, latency=False), 0.1)
    assert ids(s.schedule(0.1)) == ["map"]


def test_share_splits_capacity_and_budget_between_replicas() -> None:
    s = sched(capacity=8, latency_reserve_frac=0.0, prefill_budget_chunks=1.0)
    s.set_share(0.5, 0.0)
    assert s.stats()["engines"]["e0"]["capacity"] == 4
    for i in range(6):
        s.submit(job(f"c{i}", 10), 0.0)
    assert len(s.schedule(0.0)) == 4
    t = sched(prefill_budget_chunks=1.0)
    t.set_share(0.5, 0.0)
    for i in range(3):
        t.submit(job(f"b{i}", 300, latency=False), 0.0)
    assert ids(t.schedule(0.0)) == ["b0"]  # half of a 1,000-token chunk each
    t.set_share(1.0, 0.0)
    assert ids(t.schedule(0.0)) == ["b1", "b2"]


def test_a_replica_expects_other_replicas_prefill_ahead_of_a_non_streamed_call() -> None:
    """A call that does not stream ends its prefill by estimate. The engine prefills what
    every replica sent, so with half of it sent by another replica (the engine's reported
    load) the estimate doubles, at most to 1 / share; one replica's is unchanged, and a
    speed learned from streamed first tokens (which holds the others already) is not scaled."""
    def eta(share: float, external: int, learned: float = 0.0) -> float:
        s = sched(capacity=64)
        s.set_share(share, 0.0)
        s.submit(job("w", 400, latency=False), 0.0)
        s.schedule(0.0)
        s.on_load("e0", 1 + external, 0, 0, 0.0)
        s.submit(job("x", 600, latency=False), 0.0)
        s.on_prefill_done("w", 0.0, observed=False)
        if learned:
            s._engines.get("e0").prefill_s_per_token = learned  # type: ignore[union-attr]
        (d,) = s.schedule(0.0)
        return d.prefill_eta_s

    cfg = SchedulerConfig()
    alone = eta(1.0, 0)
    assert alone == 600 * cfg.prefill_s_per_token + cfg.decode_step_s
    assert eta(1.0, 2) == alone  # one replica: the rest is other clients, not our budget's
    assert eta(0.5, 2) == 2 * 600 * cfg.prefill_s_per_token + cfg.decode_step_s
    assert eta(0.5, 0) == alone  # the other replica sends nothing now
    assert eta(0.5, 2, learned=1e-4) == 600 * 1e-4 + cfg.decode_step_s


def test_set_group_joins_queued_siblings_late() -> None:
    s = sched(engines=2, capacity=1)
    s.submit(job("busy0", 10), 0.0)
    s.submit(job("busy1", 10), 0.0)
    s.schedule(0.0)
    s.submit(job("m0", 100, app="a", started=0.0), 0.1)
    s.submit(job("m1", 100, app="a", started=0.0), 0.1)
    s.set_group("m0", "g", 0.1)
    s.set_group("m1", "g", 0.1)
    s.set_group("busy0", "g", 0.1)  # in flight: ignored
    s.on_finish("busy0", 0.2)
    s.on_finish("busy1", 0.2)
    assert sorted(ids(s.schedule(0.2))) == ["m0", "m1"]  # the group leaves together


def test_replicas_route_a_new_prefix_to_the_same_home_engine() -> None:
    names = [f"http://10.0.0.{i}:30000" for i in range(4)]

    def replica(order: list[str]) -> Scheduler:
        s = Scheduler(SchedulerConfig())
        for n in order:
            s.add_engine(n, 64, None, 0.0, chunk_tokens=8192)
        return s

    r1, r2 = replica(names), replica(list(reversed(names)))
    homes = []
    for p in range(40):
        j1 = job(f"r1-{p}", 600, seed=p)
        j2 = job(f"r2-{p}", 600, seed=p)  # the same prompt, sent to the other replica
        r1.submit(j1, 0.0)
        r2.submit(j2, 0.0)
        (d1,) = r1.schedule(0.0)
        (d2,) = r2.schedule(0.0)
        assert d1.engine == d2.engine
        homes.append(d1.engine)
        r1.on_finish(d1.job_id, 0.0)
        r2.on_finish(d2.job_id, 0.0)
    assert len(set(homes)) == 4  # different prefixes spread over the engines


def test_least_attained_service_ranks_inferred_programs() -> None:
    s = sched(capacity=1)
    s.submit(job("long-program", attained=50_000.0, app="p1"), 1.0)
    s.submit(job("short-program", attained=300.0, app="p2"), 1.1)
    s.submit(job("fresh-program", attained=0.0, app="p3"), 1.2)
    assert ids(s.schedule(1.2)) == ["fresh-program"]


def test_protection_lingers_after_the_last_chat_ends() -> None:
    s = sched(engines=2, protect_duty=0.0, prefill_budget_chunks=50, protect_linger_s=5.0)
    s.submit(job("chat", 200, out=30), 0.0)
    (chat,) = s.schedule(0.0)
    s.on_prefill_done("chat", 0.02)
    s.on_finish("chat", 0.3)
    s.submit(job("map", 900, latency=False), 1.0)
    (d,) = s.schedule(1.0)
    assert d.engine != chat.engine  # no chat in flight, but one is likely soon: kept light
    assert s.stats()["engines"][chat.engine]["protected"]
    s.submit(job("later", 900, latency=False), 5.4)
    (d,) = s.schedule(5.4)
    assert d.engine == chat.engine  # the linger is over: the lighter engine takes it
    assert not s.stats()["engines"][chat.engine]["protected"]


def test_no_linger_lifts_protection_when_the_chat_ends() -> None:
    s = sched(engines=2, protect_duty=0.0, prefill_budget_chunks=50, protect_linger_s=0.0)
    s.submit(job("chat", 200, out=30), 0.0)
    (chat,) = s.schedule(0.0)
    s.on_finish("chat", 0.3)
    s.schedule(1.0)
    assert not s.stats()["engines"][chat.engine]["protected"]


def _chat_then_small_batch(backlog_cap: int) -> Scheduler:
    """One engine decoding a chat, five 400-token throughput jobs queued behind it."""
    s = sched(engines=1, protect_duty=1.0, prefill_budget_chunks=50,
              protect_backlog_tokens=backlog_cap)
    s.submit(job("chat", 200, out=300), 0.0)
    s.schedule(0.0)
    s.on_prefill_done("chat", 0.02)
    for i in range(5):
        s.submit(job(f"s{i}", 400, latency=False), 0.1)
    return s


def test_a_protected_engine_keeps_its_throughput_backlog_short() -> None:
    # Small throughput prefills may use a protected engine, but only a pass's worth at a
    # time: a chat arriving there waits for a short pass, not a whole chunk of them.
    s = _chat_then_small_batch(1000)
    assert ids(s.schedule(0.1)) == ["s0", "s1"]  # 800 tokens; a third would make 1,200
    assert s.stats()["admission_refusals"]["latency_protected"] >= 1
    s.on_prefill_done("s0", 0.2)
    s.on_prefill_done("s1", 0.2)
    assert ids(s.schedule(0.2)) == ["s2", "s3"]
    assert len(_chat_then_small_batch(0).schedule(0.1)) == 5  # no cap: the old behaviour
