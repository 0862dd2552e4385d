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


def private_urls(workers: list[psutil.Process], shared: str, timeout: float = 30) -> list[str]:
    """Each worker's own listener (where peers relay its sessions' requests), once it
    serves (a worker just spawned is still importing)."""
    port = int(shared.rsplit(":", 1)[1])
    out = []
    deadline = time.monotonic() + timeout
    for w in workers:
        while True:
            listening = {c.laddr.port for c in w.net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN} - {port}
            if listening:
                break
            assert time.monotonic() < deadline, f"worker {w.pid} has no listener of its own"
            time.sleep(0.1)
        (own,) = listening
        url = f"http://127.0.0.1:{own}"
        while httpx.get(url + "/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"worker {w.pid} not ready"
            time.sleep(0.1)
        out.append(url)
    return out


def served(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    line = 'parrot_requests_total{route="/v1/chat/completions",status="200"} '
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


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
        # One session's requests, half sent to each worker's own port: all run on one.
        own = private_urls(workers, url)
        time.sleep(1.5)  # both workers' heartbeats have seen the other
        with httpx.Client(timeout=30) as c:
            for i in range(8):
                r = c.post(own[i % 2] + "/v1/chat/completions", json=CHAT,
                           headers={"X-Parrot-Session": "one-app"})
                assert r.status_code == 200, r.text
        assert sorted(served(u) for u in own) == [0, 8]
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
