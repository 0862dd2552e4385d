"""Children of `serve` (embedded redis-server, simulated engines) never outlive it, even when
it is killed with SIGKILL: the kernel's parent-death signal, and the engines' parent watch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.serving import free_port
from gateway.testing import serve_process

pytestmark = pytest.mark.timeout(120)


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by init


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


@pytest.mark.skipif(sys.platform != "linux", reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_children_die_with_a_sigkilled_serve(tmp_path: Path) -> None:
    with serve_process(tmp_path / "serve.log", {"PARROT_SIM_TIME_SCALE": "0.05"}) as (_, proc):
        kids = children(proc.pid)
        assert len(kids) == 3, kids  # redis-server and two simulated engines
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        left = wait_gone(kids, 5)
        assert not left, f"still running after the parent's SIGKILL: {left}"
        print(f"\nall {len(kids)} children gone {time.monotonic() - t0:.2f}s after serve's SIGKILL")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc is Linux's")
def test_engine_watches_its_parent_without_the_signal() -> None:
    """Where PR_SET_PDEATHSIG does not exist: a simulated engine started with
    PARROT_WATCH_PARENT_PID exits once that parent is gone."""
    port = free_port()
    middle = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "PARROT_WATCH_PARENT_PID": str(os.getpid())}}
        p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "sim", "--port", "{port}",
                              "--profile", "instant"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(p.pid, flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE)
    try:
        assert middle.stdout is not None
        engine = int(middle.stdout.readline())
        time.sleep(1.0)
        assert alive(engine)
        middle.kill()
        middle.wait()
        assert not wait_gone({engine}, 5), "the engine outlived its parent"
    finally:
        middle.kill()
