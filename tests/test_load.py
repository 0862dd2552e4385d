"""Load: many concurrent sessions of small DAGs on fast simulated engines lose nothing.

The CI form runs 100 sessions; the full 500-session form is marked slow and is also
``python -m benchmarks.load --sessions 500``.
"""

from __future__ import annotations

import pytest

from benchmarks.load import run_local, summarize

pytestmark = pytest.mark.timeout(300)


def test_summarize_percentiles() -> None:
    p = summarize([i / 1000 for i in range(1, 101)])
    assert p["n"] == 100 and p["p50"] == 51 and p["p90"] == 91 and p["p99"] == 100
    assert summarize([])["n"] == 0


def _run(sessions: int) -> None:
    report = run_local(sessions, engines=2, time_scale=0.01, timeout=120)
    print("\n" + report.table())
    assert report.requests == sessions * 5  # put, 2 async, 1 sync, graph
    assert report.lost == [], report.lost[:10]
    assert report.failed == {}
    assert report.ok == report.requests
    assert len(report.latencies["session"]) == sessions


def test_load_100_sessions() -> None:
    _run(100)


@pytest.mark.slow
def test_load_500_sessions() -> None:
    _run(500)
