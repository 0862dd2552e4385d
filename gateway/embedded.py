"""Embedded defaults for `parrot-gateway serve`: a redis-server and simulated engines
as child processes on free loopback ports, stopped when the gateway exits.

They never outlive it, however it dies: on Linux each child asks the kernel for
SIGKILL when its parent dies (``PR_SET_PDEATHSIG``, set between fork and exec), and
the simulated engines, Python processes, also watch their parent's pid
(``PARROT_WATCH_PARENT_PID``) and exit when it changes, for systems without that
signal. The caveat of the signal: it fires when the *thread* that started the
child exits, so children are started from the main thread.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from common.serving import free_port

from .redis_server import RedisServer, die_with_parent
from .settings import Settings

log = logging.getLogger("parrot.embedded")

WATCH_PARENT_ENV = "PARROT_WATCH_PARENT_PID"


def watch_parent(interval_s: float = 1.0) -> None:
    """In a child started with ``PARROT_WATCH_PARENT_PID``: exit as soon as that parent is
    gone (this process was re-parented). The variable is consumed, not inherited."""
    import threading

    raw = os.environ.pop(WATCH_PARENT_ENV, "")
    if not raw.isdigit():
        return
    parent = int(raw)

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=run, name="parent-watch", daemon=True).start()

BANNER = (
    "\n" + "=" * 72 + "\n"
    "  SIMULATED ENGINES: {n} x '{profile}' (time-scale {scale}) on {urls}\n"
    "  These are CPU stand-ins for GPU SGLang engines, for development only.\n"
    "  Pass --backend URL (repeatable) to use real SGLang engines.\n"
    + "=" * 72
)


@dataclass
class SimProcesses:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def start_sim_engines(
    n: int, *, profile: str, time_scale: float, seed: int = 0, timeout: float = 30.0
) -> SimProcesses:
    sims = SimProcesses()
    for i in range(n):
        port = free_port()
        cmd = [
            sys.executable, "-m", "gateway.cli", "sim", "--host", "127.0.0.1", "--port", str(port),
            "--profile", profile, "--time-scale", str(time_scale), "--seed", str(seed + i),
        ]
        sims.procs.append(subprocess.Popen(
            cmd, preexec_fn=die_with_parent,
            env={**os.environ, WATCH_PARENT_ENV: str(os.getpid())},
        ))
        sims.urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    pending = list(sims.urls)
    while pending:
        if time.monotonic() > deadline or any(p.poll() is not None for p in sims.procs):
            sims.stop()
            raise RuntimeError("simulated engines did not start")
        for url in list(pending):
            try:
                if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                    pending.remove(url)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    return sims


@dataclass
class Embedded:
    """What `serve` started itself; ``stop()`` undoes all of it."""

    redis: RedisServer | None = None
    sims: SimProcesses | None = None

    def stop(self) -> None:
        if self.sims:
            self.sims.stop()
        if self.redis:
            self.redis.cleanup()


def start_embedded(settings: Settings) -> tuple[Settings, Embedded]:
    emb = Embedded()
    try:
        if not settings.redis:
            emb.redis = RedisServer(
                appendonly=settings.redis_appendonly, data_dir=settings.redis_dir
            ).start()
            log.warning(
                "EMBEDDED REDIS at %s (appendonly=%s); pass --redis URL for a shared Redis",
                emb.redis.url, settings.redis_appendonly,
            )
            settings = settings.model_copy(update={"redis": emb.redis.url})
        if not settings.backend:
            emb.sims = start_sim_engines(
                settings.sim_engines, profile=settings.sim_profile, time_scale=settings.sim_time_scale
            )
            log.warning(
                BANNER.format(
                    n=settings.sim_engines, profile=settings.sim_profile,
                    scale=settings.sim_time_scale, urls=" ".join(emb.sims.urls),
                )
            )
            settings = settings.model_copy(update={"backend": emb.sims.urls, "backend_kind": "sglang"})
    except BaseException:
        emb.stop()
        raise
    return settings, emb
