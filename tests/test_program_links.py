"""The false-link measurement of program inference (benchmarks.program_links), CI-sized."""

from __future__ import annotations

import pytest

from analysis.programs import ProgramTable
from benchmarks import program_links

pytestmark = pytest.mark.timeout(60)


def test_unrelated_conversations_are_linked_in_under_one_percent() -> None:
    m = program_links.measure(conversations=800, seed=1)
    assert m["requests"] > 3000
    assert m["false_link_rate"] < 0.01, m
    assert m["recall"] > 0.6, m


def test_the_measurement_sees_false_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ambiguity rule (last writer wins), identical openers merge conversations:
    the measurement must catch that, or it proves nothing."""

    def last_writer_wins(self: ProgramTable, pid: str, keys: object) -> tuple[str, ...]:
        for k in keys:  # type: ignore[attr-defined]
            self.keys[k] = pid
        return ()

    monkeypatch.setattr(ProgramTable, "learn", last_writer_wins)
    m = program_links.measure(conversations=800, seed=1)
    assert m["false_link_rate"] > 0.05, m
