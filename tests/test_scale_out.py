"""Replicas share engines: capacity split between live replicas, one prefix one engine.

Two gateway replicas on one Redis in front of the same simulated engines. Asserted
on the engines' own counts, not on what the gateways believe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.serving import UvicornThread, free_port
from gateway.testing import start_engine, start_gateway, wait_ready

pytestmark = pytest.mark.timeout(120)

FAST = {"replica_heartbeat_s": 0.2, "replica_ttl_s": 1.0, "health_interval_s": 0.3}


def share_of(gw: UvicornThread) -> float:
    return float(gw.server.config.app.state.gateway.dispatcher.policy.stats()["share"])


def wait_share(gw: UvicornThread, value: float, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abs(share_of(gw) - value) < 1e-6:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"share stayed {share_of(gw)}, expected {value}")


async def _flood(urls: list[str], n: int, engines: list[str]) -> int:
    """``n`` requests spread over the replicas; returns the most requests any engine held."""
    peak = 0
    done = False

    async def watch(c: httpx.AsyncClient) -> None:
        nonlocal peak
        while not done:
            for e in engines:
                load = (await c.get(e + "/get_load")).json()[0]  # SGLang's shape: per DP rank
                peak = max(peak, int(load["num_reqs"]))
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
        w = asyncio.create_task(watch(c))
        body = {"messages": [{"role": "user", "content": "count to ten"}], "max_tokens": 48}
        rs = await asyncio.gather(*(c.post(urls[i % len(urls)] + "/v1/chat/completions", json=body)
                                    for i in range(n)))
        done = True
        await w
    assert [r.status_code for r in rs] == [200] * n, [r.text for r in rs if r.status_code != 200][:3]
    return peak


def test_two_replicas_never_exceed_an_engines_capacity_together(redis_url: str) -> None:
    engines = [start_engine(time_scale=0.1, max_running_requests=4) for _ in range(2)]
    urls = [e.url for e in engines]
    gws = [start_gateway(redis_url, urls, **FAST) for _ in range(2)]
    try:
        for gw in gws:
            wait_share(gw, 0.5)
        peak = asyncio.run(_flood([g.url for g in gws], 64, urls))
        assert 2 <= peak <= 4, peak  # each replica holds half of the 4 slots
    finally:
        for gw in gws:
            gw.stop()
        for e in engines:
            e.stop()


def test_a_new_prefix_lands_on_one_engine_whichever_replica_gets_it(redis_url: str) -> None:
    engines = [start_engine(time_scale=0.02) for _ in range(3)]
    urls = [e.url for e in engines]
    a, b = (start_gateway(redis_url, urls, **FAST) for _ in range(2))
    try:
        with httpx.Client(timeout=30) as c:
            for k in range(6):
                system = f"Persona {k}. " + " ".join(f"rule {k}-{i}: be exact." for i in range(120))
                first = c.post(a.url + "/v1/chat/completions", json={
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
                    "max_tokens": 4})
                second = c.post(b.url + "/v1/chat/completions", json={
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": "something else"}], "max_tokens": 4})
                assert first.status_code == second.status_code == 200
                u = second.json()["usage"]
                # b never saw this prompt; it still went where a had sent it
                assert u["prompt_tokens_details"]["cached_tokens"] >= 0.8 * first.json()["usage"][
                    "prompt_tokens"], (k, u)
    finally:
        a.stop()
        b.stop()
        for e in engines:
            e.stop()


def test_a_killed_replica_gives_its_share_back(redis_url: str, tmp_path: Path) -> None:
    engine = start_engine(time_scale=0.02)
    a = start_gateway(redis_url, [engine.url], **FAST)
    port = free_port()
    env: dict[str, Any] = {**os.environ, "PARROT_REPLICA_HEARTBEAT_S": "0.2", "PARROT_REPLICA_TTL_S": "1.0"}
    with open(tmp_path / "b.log", "wb") as log:
        b = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                              "--backend", engine.url, "--redis", redis_url],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", b)
        wait_share(a, 0.5)
        killed = time.monotonic()
        os.kill(b.pid, signal.SIGKILL)
        b.wait(10)
        back = wait_share(a, 1.0, timeout=10)
        assert back - killed < 5.0  # within a few seconds (lease 1 s, heartbeat 0.2 s)
    finally:
        if b.poll() is None:
            b.kill()
        a.stop()
        engine.stop()
