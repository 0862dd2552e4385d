"""Every Python snippet of the README runs against a real gateway (base URL swapped in)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.testing import Stack

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_snippets() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.timeout(120)
def test_readme_snippets_run(stack: Stack) -> None:
    namespace: dict[str, object] = {}
    for block in BLOCKS:  # in order: later snippets use names (client, model) from earlier ones
        exec(compile(block.replace("http://127.0.0.1:8000", stack.url), str(README), "exec"), namespace)


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    command = "python3 -m pip install -q -e '.[test]' && python3 -m pytest -q -m \"not slow\" --timeout 300"
    assert command in README.read_text()
    assert command in ci


def test_readme_benchmark_tables_match_results() -> None:
    """The README's benchmark tables are exactly what results/ holds (regenerate them with
    `python -m benchmarks.report --readme README.md results`)."""
    from benchmarks.report import BLOCK, fill_readme

    results = README.parent / "results"
    for page in (README, results / "README.md"):
        text = page.read_text()
        assert len(BLOCK.findall(text)) >= 3, page
        assert fill_readme(text, results) == text, f"{page} is stale: regenerate its tables"
