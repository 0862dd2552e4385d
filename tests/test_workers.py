"""`parrot-gateway serve --workers N`: N gateway processes on one port, supervised."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.testing import serve_process

pytestmark = pytest.mark.timeout(120)

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def workers_of(proc_pid: int) -> list[psutil.Process]:
    out = []
    for c in psutil.Process(proc_pid).children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:  # gone or a zombie not reaped yet
            continue
    return out


async def burst(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT) for _ in range(n)))
    return [r.status_code for r in rs]


def test_two_workers_serve_restart_and_drain(tmp_path: Path) -> None:
    env = {"PARROT_WORKERS": "2", "PARROT_SIM_TIME_SCALE": "0.05"}
    with serve_process(tmp_path / "serve.log", env=env) as (url, proc):
        deadline = time.monotonic() + 30
        while len(workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = workers_of(proc.pid)
        assert len(workers) == 2
        assert asyncio.run(burst(url, 24)) == [200] * 24
        # A worker that dies is replaced; the port keeps answering meanwhile.
        victim = workers[0].pid
        os.kill(victim, signal.SIGKILL)
        assert asyncio.run(burst(url, 8)) == [200] * 8
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = {w.pid for w in workers_of(proc.pid)}
            if len(pids) == 2 and victim not in pids:
                break
            time.sleep(0.2)
        assert len(pids) == 2 and victim not in pids
        assert asyncio.run(burst(url, 8)) == [200] * 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "gateway workers on" in (tmp_path / "serve.log").read_text()
