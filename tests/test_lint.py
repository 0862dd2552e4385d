"""The tree passes the ruff rules configured in pyproject.toml (E, F, W, B, I)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_ruff_check_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the project's test extra)")
    out = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                         cwd=ROOT, timeout=100)
    assert out.returncode == 0, out.stdout + out.stderr
