"""Chaos: two replicas behind one address, one killed with SIGKILL mid-run; every accepted
session completes on the survivor (benchmarks/chaos.py). The CI form runs 30 sessions;
the full form (200) is marked slow and is also ``python -m benchmarks.chaos``."""

from __future__ import annotations

import pytest

from benchmarks.chaos import chaos

pytestmark = pytest.mark.timeout(300)


def _run(sessions: int, baseline: bool) -> None:
    # Killed half a second in, once the victim runs requests on its engines: with sessions
    # relayed to their owners, 30 of them can all finish within a second, and a kill at 1 s
    # (the CLI's default) then hits nothing; on a loaded machine, a kill at 0.5 s found the
    # victim still registering its first requests, holding no work to adopt.
    report = chaos(sessions, baseline=baseline, kill_after=0.5)
    print("\nchaos:", report.as_dict())
    assert report.lost == [], report.lost
    assert report.completed == sessions
    assert report.in_flight_at_kill > 0  # the kill did hit work in flight
    assert report.victim_engine_inflight > 0  # ... running on the victim's engines
    assert report.adopted > 0 and report.adoption_s is not None
    assert report.adoption_s < 10  # lease TTL 3 s + heartbeats, on a loaded machine


def test_replica_killed_mid_run_loses_nothing() -> None:
    _run(30, baseline=False)


@pytest.mark.slow
def test_replica_killed_under_200_sessions() -> None:
    _run(200, baseline=True)
