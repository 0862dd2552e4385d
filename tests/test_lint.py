"""The tree passes the ruff rules (E, F, W, B, I) and the import-linter layering contracts
configured in pyproject.toml."""

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


@pytest.mark.timeout(120)
def test_import_layers_hold() -> None:
    """common at the bottom, pure analysis and policy, backends below the gateway, the SDK
    apart, no cycles between siblings (the contracts in pyproject.toml)."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (it comes with the project's test extra)")
    out = subprocess.run([lint, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=100)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
