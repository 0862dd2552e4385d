"""Inferred programs in the pure policy: least attained service first, engine affinity."""

from __future__ import annotations

import pytest

from analysis.prefix import block_hashes
from gateway.policy import Job, Scheduler, SchedulerConfig

pytestmark = pytest.mark.timeout(30)


def job(jid: str, seed: int, **kw: object) -> Job:
    tokens = list(range(seed * 10_000, seed * 10_000 + 2048))
    return Job(jid, "t", len(tokens), max_tokens=32, latency_critical=True,
               prefix_hashes=tuple(block_hashes(tokens, 32)), **kw)  # type: ignore[arg-type]


def sched(engines: int = 2, capacity: int = 4) -> Scheduler:
    s = Scheduler(SchedulerConfig(app_window=0))
    for i in range(engines):
        s.add_engine(f"e{i}", capacity, None, now=0.0)
    return s


def test_program_step_follows_its_engine_where_this_replica_saw_nothing() -> None:
    """Another replica ran the previous step on some engine: the record says so, and the
    step goes there even though this replica's prefix index knows nothing."""
    control = sched()
    control.submit(job("step2", 2, session="p"), 1.0)
    (alone,) = control.schedule(1.0)
    other = "e1" if alone.engine == "e0" else "e0"
    s = sched()
    s.submit(job("step2", 2, session="p", affinity=(other, 1500)), 1.0)
    (d,) = s.schedule(1.0)
    assert d.engine == other
    s.submit(job("gone", 3, session="q", affinity=("e9", 1500)), 2.0)  # unknown engine: ignored
    assert len(s.schedule(2.0)) == 1


def test_least_attained_program_goes_first_inside_a_tenant() -> None:
    s = sched(engines=1, capacity=1)
    s.submit(job("busy", 1), 0.0)
    assert len(s.schedule(0.0)) == 1  # the engine is full now
    s.submit(job("long-program", 2, session="a", attained=50_000.0, app_started=0.0), 1.0)
    s.submit(job("short-program", 3, session="b", attained=300.0, app_started=0.5), 2.0)
    s.submit(job("new-program", 4, session="c", attained=0.0, app_started=2.5), 3.0)
    order = []
    for t, done in ((4.0, "busy"), (5.0, None), (6.0, None)):
        if done:
            s.on_finish(done, t, cached_tokens=0)
        out = s.schedule(t)
        order += [d.job_id for d in out]
        for d in out:
            s.on_finish(d.job_id, t + 0.5, cached_tokens=0)
    assert order == ["new-program", "short-program", "long-program"]
