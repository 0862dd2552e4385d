"""The pure engine: prefix hits, priority, KV admission, batching, abort."""

from __future__ import annotations

import pytest

from backends.sim.engine import Engine, EngineConfig, EngineRequest, RequestTooLarge
from backends.sim.profiles import get_profile

P = get_profile("h100-llama3-8b")


def make(max_running: int = 8, kv: int = 100_000, chunk: int = 8192) -> Engine:
    return Engine(EngineConfig(P, max_running, kv, chunk))


def run_all(e: Engine, now: float = 0.0) -> tuple[float, dict[str, float], dict[str, float]]:
    """Step until idle; returns end time, first-token and finish times per rid."""
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    while e.has_work:
        r = e.step(now)
        now += r.duration
        for ev in r.events:
            if ev.kind in ("first_token",) or (ev.kind == "finished" and ev.rid not in first):
                first.setdefault(ev.rid, now)
            if ev.kind == "finished":
                done[ev.rid] = now
    return now, first, done


def req(rid: str, prompt: list[int], out: int = 4, prio: int = 0) -> EngineRequest:
    return EngineRequest(rid, prompt, list(range(out)), prio)


def test_exact_token_count_and_cached_prefix_skips_prefill():
    e = make()
    shared = list(range(10, 2010))
    e.add(req("a", shared + [1, 2, 3], out=5), 0)
    t_end, first, _ = run_all(e)
    e.add(req("b", shared + [7, 8, 9], out=5), t_end)
    events = []
    now = t_end
    b_first = None
    while e.has_work:
        r = e.step(now)
        now += r.duration
        events += r.events
        if b_first is None and r.events:
            b_first = now - t_end
    b_events = [ev for ev in events if ev.rid == "b"]
    assert len(b_events) == 5 and b_events[-1].kind == "finished"
    assert b_events[0].cached_tokens >= 2000
    assert b_first is not None and b_first < first["a"] / 5  # TTFT shrinks with the hit
    assert e.stats.cached_tokens >= 2000


def test_priority_jumps_the_waiting_queue():
    e = make(max_running=1)
    e.add(req("running", [1] * 50, out=20), 0)
    e.step(0)
    for i in range(3):
        e.add(req(f"low{i}", [2 + i] * 50, out=5, prio=0), 0.001)
    e.add(req("high", [9] * 50, out=5, prio=10), 0.002)
    _, _, done = run_all(e, 0.01)
    assert done["high"] < min(done[f"low{i}"] for i in range(3))
    assert done["low0"] < done["low1"] < done["low2"]  # FCFS within a priority


def test_throughput_grows_with_batch_until_the_limit_then_latency_grows():
    def measure(n: int) -> tuple[float, float]:
        e = make(max_running=8)
        for i in range(n):
            e.add(req(f"r{i}", [i + 1] * 100, out=64), 0)
        end, _, done = run_all(e)
        return n / end, sum(done.values()) / n

    thr1, lat1 = measure(1)
    thr8, lat8 = measure(8)
    thr32, lat32 = measure(32)
    assert thr8 > 5 * thr1
    assert thr32 < 1.3 * thr8  # saturated: no more throughput
    assert lat32 > 2 * lat8  # ... but requests queue


def test_kv_full_makes_new_requests_wait_and_capacity_holds():
    e = make(max_running=8, kv=1000)
    e.add(req("a", [1] * 500, out=100), 0)
    e.add(req("b", [2] * 500, out=100), 0)
    r = e.step(0)
    assert len(e.running) == 1 and len(e.waiting) == 1  # b does not fit beside a
    now = r.duration
    while e.has_work:
        assert e.used_tokens <= 1000
        r = e.step(now)
        now += r.duration
    assert e.stats.finished == 2


def test_chunked_prefill_splits_long_prompts():
    e = make(chunk=1000)
    e.add(req("a", list(range(3500)), out=2), 0)
    sizes = []
    while e.has_work:
        r = e.step(0)
        if r.prefill_tokens:
            sizes.append(r.prefill_tokens)
    assert sizes == [1000, 1000, 1000, 500]


def test_abort_frees_everything():
    e = make()
    e.add(req("a", [1] * 100, out=50), 0)
    e.add(req("b", [2] * 100, out=50), 0)
    e.step(0)
    assert e.abort("a") and e.abort("b") and not e.abort("zzz")
    r = e.step(1)
    assert {ev.kind for ev in r.events} == {"aborted"}
    assert e.reserved_tokens == 0 and e.cache.protected_tokens == 0
    assert not e.has_work


def test_kv_is_reserved_for_the_budget_asked_not_the_output_produced():
    """A request that will stop early (EOS, stop string) still reserves max_new_tokens, as
    SGLang does: the second one waits although the outputs alone would fit together."""
    e = make(kv=1000)
    early = EngineRequest("a", list(range(100)), list(range(5)), max_new_tokens=800)
    with pytest.raises(RequestTooLarge):
        e.add(EngineRequest("big", list(range(300)), list(range(5)), max_new_tokens=800), 0)
    e.add(early, 0)
    e.add(EngineRequest("b", list(range(500, 600)), list(range(5)), max_new_tokens=800), 0)
    e.step(0.0)
    assert set(e.running) == {"a"} and [r.req.rid for r in e.waiting] == ["b"]
    # b waits: a holds its 100 prompt tokens (now cached) and 800 for output; b needs 900.
    assert e.reserved_tokens == 800 and e.used_tokens == 900
    _, _, done = run_all(e)
    assert set(done) == {"a", "b"} and e.reserved_tokens == 0
