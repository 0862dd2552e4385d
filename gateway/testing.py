"""An in-process stack for tests and examples: simulated engines and a gateway, each a
real uvicorn server on loopback (own thread, own event loop), over a given Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common.serving import UvicornThread, free_port

from .settings import Settings


@dataclass
class Stack:
    gateway: UvicornThread | None = None
    engines: list[UvicornThread] = field(default_factory=list)
    extra_gateways: list[UvicornThread] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def engine_urls(self) -> list[str]:
        return [e.url for e in self.engines]

    def stop(self) -> None:
        for g in [*self.extra_gateways, *([self.gateway] if self.gateway else [])]:
            g.stop()
        for e in self.engines:
            e.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_engine(time_scale: float = 0.02, **sim: Any) -> UvicornThread:
    from backends.sim.app import create_sim_app
    from backends.sim.config import SimConfig

    return UvicornThread(create_sim_app(SimConfig(time_scale=time_scale, **sim))).start()


def start_gateway(redis_url: str, engine_urls: list[str], **overrides: Any) -> UvicornThread:
    from .app import create_app

    values: dict[str, Any] = {
        "backend": engine_urls, "redis": redis_url, "health_interval_s": 0.5, "drain_timeout_s": 5.0,
    }
    values.update(overrides)
    values["port"] = values.get("port") or free_port()  # known before the app: peers relay to it
    settings = Settings(**values)
    return UvicornThread(create_app(settings), port=settings.port,
                         timeout_keep_alive=int(settings.keep_alive_s)).start()


def start_stack(
    redis_url: str,
    *,
    engines: int = 2,
    time_scale: float = 0.02,
    sim: dict[str, Any] | None = None,
    replicas: int = 1,
    **overrides: Any,
) -> Stack:
    stack = Stack()
    try:
        stack.engines = [start_engine(time_scale, **(sim or {})) for _ in range(engines)]
        stack.gateway = start_gateway(redis_url, stack.engine_urls, **overrides)
        for _ in range(replicas - 1):
            stack.extra_gateways.append(start_gateway(redis_url, stack.engine_urls, **overrides))
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    """Poll ``url``/ready until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, "the server exited early"
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become ready in {timeout:.0f} s")


@contextmanager
def serve_process(
    log_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`parrot-gateway serve` as a child process (embedded defaults) on a free port, its
    output in ``log_path``; yields (url, process) once ready, kills it if still running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        try:
            wait_ready(url, proc)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
