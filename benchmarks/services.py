"""The processes a benchmark run needs, started once and stopped together:
a real redis-server, simulated engines (or given engine URLs), parrot-gateway
and SGLang Model Gateway (``smg``), each a child process on a free loopback
port with its log under the output directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from common.serving import free_port
from gateway.redis_server import RedisServer

from .affinity import set_process_affinity

# Idle keep-alive of the simulated engines started here (SGLang's server: 5 s). Longer so
# the load generator's pooled connections outlive the gaps between arrivals at light load:
# a burst that has to open its connections sends its last request ~5-10 ms late (each
# connect waits for the loop to finish the burst's other sends), which is the harness's
# delay, not the system's (the gateway and smg keep theirs open at least as long).
KEEP_ALIVE_S = 75


class ServiceError(RuntimeError):
    pass


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float, what: str,
               ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} (see its log)")
        try:
            if httpx.get(url, timeout=1.0).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ServiceError(f"{what} not ready at {url} after {timeout:.0f}s")


@dataclass
class Services:
    """Everything one ``bench`` invocation runs against."""

    log_dir: Path
    engines: list[str] = field(default_factory=list)
    simulated: bool = False
    profile: str = "h100-llama3-8b"
    time_scale: float = 1.0
    gateway: str | None = None
    router: str | None = None
    router_note: str | None = None
    replicas: str | None = None  # HAProxy in front of gateway replicas (start_replicas)
    replicas_by_session: str | None = None  # the same replicas, a session's requests to one
    variants: dict[str, str] = field(default_factory=dict)  # policy variant -> its gateway URL
    replicas_note: str | None = None
    model: str = "default"
    model_path: str | None = None
    group_redis: dict[str, RedisServer] = field(default_factory=dict)
    """Each group of gateways' own Redis (`start_gateway`), in the order started."""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    cpus: tuple[int, ...] | None = None
    """``pin()`` moves the engines to these CPUs, and the systems under test (gateway, redis,
    smg, haproxy) too unless ``system_cpus`` names others."""
    system_cpus: tuple[int, ...] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    # -------------------------------------------------------------- start

    def _spawn(self, name: str, cmd: list[str],
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env} if env else None)
        self.procs.append((name, proc))
        return proc

    def start_engines(self, n: int, profile: str, time_scale: float, seed: int = 0) -> None:
        self.simulated, self.profile, self.time_scale = True, profile, time_scale
        pending = []
        for i in range(n):
            port = free_port()
            proc = self._spawn(f"sim{i}", [
                sys.executable, "-m", "gateway.cli", "sim", "--host", "127.0.0.1", "--port", str(port),
                "--profile", profile, "--time-scale", str(time_scale), "--seed", str(seed + i),
                "--keep-alive-s", str(KEEP_ALIVE_S), "--log-level", "warning",
            ])
            self.engines.append(f"http://127.0.0.1:{port}")
            pending.append((proc, self.engines[-1]))
        for proc, url in pending:
            _wait_http(url + "/health", proc, 60, f"simulated engine {url}")
        self._model_info()

    def use_backends(self, urls: list[str]) -> None:
        self.engines = [u.rstrip("/") for u in urls]
        self._model_info()

    def _model_info(self) -> None:
        url = self.engines[0]
        try:
            models = httpx.get(url + "/v1/models", timeout=5).json()
            self.model = models["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            self.model = "default"
        for path in ("/get_model_info", "/model_info"):
            try:
                info = httpx.get(url + path, timeout=5).json()
                self.model_path = info.get("model_path") or info.get("tokenizer_path")
                if self.model_path:
                    break
            except (httpx.HTTPError, ValueError):
                continue

    def start_gateway(self, extra: list[str] | None = None, name: str = "gateway",
                      env: dict[str, str] | None = None, group: str | None = None) -> str:
        """A parrot-gateway process over the engines (``env``: its ``PARROT_*`` settings);
        its URL. The first one started is ``self.gateway``. Gateways of one ``group``
        (default: its name) share a Redis and are replicas of one deployment; each group
        has its own redis-server, so systems under test never see each other as replicas
        (a replica holds 1 / live replicas of every engine: an idle gateway of another
        system on the same Redis would take a share of the one measured)."""
        group = group or name
        redis = self.group_redis.get(group)
        if redis is None:
            redis = self.group_redis[group] = RedisServer().start()
        port = free_port()
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--redis", redis.url, "--backend-kind", "sglang", "--log-level", "warning"]
        for u in self.engines:
            cmd += ["--backend", u]
        proc = self._spawn(name, cmd + list(extra or []), env)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/ready", proc, 60, f"parrot-gateway ({name})")
        if self.gateway is None:
            self.gateway = url
        return url

    def start_replicas(self, n: int = 2) -> bool:
        """``n`` more gateway replicas on the shared Redis, behind HAProxy round robin (the
        Debian package; a real load balancer, as a deployment would have), and behind a
        second HAProxy frontend that hashes ``X-Parrot-Session`` (consistent hashing; a
        request without one goes round robin), so that a session's requests meet on one
        replica. False, with a note, when HAProxy is not installed."""
        binary = shutil.which("haproxy")
        if binary is None:
            self.replicas_note = ("haproxy not found (apt-get install -y haproxy); "
                                  "the 2-replica systems are skipped")
            return False
        urls = [self.start_gateway(name=f"gateway-r{i}", group="replicas") for i in range(n)]
        port, port_by_session = free_port(), free_port()
        servers = "\n".join(f"    server r{i} {u.removeprefix('http://')}" for i, u in enumerate(urls))
        cfg = self.log_dir / "haproxy.cfg"
        cfg.write_text(
            "global\n    maxconn 4000\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 900s\n"
            "    timeout server 900s\n    option http-keep-alive\n"
            f"frontend parrot\n    bind 127.0.0.1:{port}\n    default_backend replicas\n"
            f"backend replicas\n    balance roundrobin\n{servers}\n"
            f"frontend parrot_by_session\n    bind 127.0.0.1:{port_by_session}\n"
            "    default_backend replicas_by_session\n"
            "backend replicas_by_session\n    balance hdr(X-Parrot-Session)\n    hash-type consistent\n"
            f"{servers}\n"
        )
        proc = self._spawn("haproxy", [binary, "-f", str(cfg), "-db"])
        self.replicas = f"http://127.0.0.1:{port}"
        _wait_http(self.replicas + "/ready", proc, 30, "haproxy")
        self.replicas_by_session = f"http://127.0.0.1:{port_by_session}"
        _wait_http(self.replicas_by_session + "/ready", proc, 30, "haproxy")
        return True

    def start_variants(self, envs: dict[str, dict[str, str]]) -> None:
        """One gateway process per policy variant (its settings in ``envs``)."""
        for name, env in envs.items():
            self.variants[name] = self.start_gateway(name=name, env=env)

    def start_router(self) -> bool:
        """SGLang Model Gateway in front of the same engines; False (with a note) if absent."""
        binary = shutil.which("smg")
        if binary is None:
            self.router_note = "smg not found (pip install sglang-router); sglang-router skipped"
            return False
        port = free_port()
        cmd = [binary, "launch", "--host", "127.0.0.1", "--port", str(port), "--policy", "cache_aware",
               "--log-level", "warn", "--prometheus-port", str(free_port()),
               "--worker-urls", *self.engines]
        if self.model_path:
            cmd += ["--tokenizer-path", self.model_path]
        proc = self._spawn("smg", cmd)
        self.router = f"http://127.0.0.1:{port}"
        try:
            _wait_http(self.router + "/health", proc, 60, "smg")
            _wait_http(self.router + "/v1/models", proc, 30, "smg workers")
        except ServiceError as exc:
            self.router_note = f"smg failed to start: {exc}; sglang-router skipped"
            self.router = None
            return False
        return True

    def pin(self) -> None:
        """Pin every thread of every service process (and their children): engines to
        ``cpus``, the rest to ``system_cpus`` (default ``cpus``). Done once all are ready,
        so that their start-up (imports, tokenizer loading) still uses every CPU; threads
        they start later inherit the mask."""
        if not self.cpus:
            return
        for role, pid in self.pids().items():
            cpus = self.cpus if role.startswith("engine") else (self.system_cpus or self.cpus)
            try:
                tree = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
            except psutil.Error:
                continue
            for p in tree:
                set_process_affinity(p, cpus)

    @property
    def redis(self) -> RedisServer | None:
        """The first gateway's Redis."""
        return next(iter(self.group_redis.values()), None)

    def pids(self) -> dict[str, int]:
        """Service processes by role (``engine0``..., ``gateway``, ``smg``, ``redis``: the
        first gateway's, ``redis-<group>``: another group's)."""
        out = {}
        for name, proc in self.procs:
            role = f"engine{name[3:]}" if name.startswith("sim") else name
            if proc.poll() is None:
                out[role] = proc.pid
        for group, redis in self.group_redis.items():
            if redis.proc is not None:
                out["redis" if redis is self.redis else f"redis-{group}"] = redis.proc.pid
        return out

    # -------------------------------------------------------------- engine control

    async def flush(self, client: httpx.AsyncClient, attempts: int = 100) -> None:
        """Empty every engine's prefix cache (retrying while requests drain)."""
        for url in self.engines:
            for _ in range(attempts):
                try:
                    r = await client.post(url + "/flush_cache", timeout=10)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)

    async def busy_seconds(self, client: httpx.AsyncClient) -> float | None:
        """Sum of the engines' simulated busy time (unscaled), if they export it."""
        total, seen = 0.0, False
        for url in self.engines:
            try:
                text = (await client.get(url + "/metrics", timeout=5)).text
            except httpx.HTTPError:
                continue
            m = re.search(r"^sim:busy_seconds_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)", text, re.M)
            if m:
                total += float(m.group(1))
                seen = True
        return total if seen else None

    # -------------------------------------------------------------- stop

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        for redis in self.group_redis.values():
            redis.cleanup()
        self.group_redis.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def label(self) -> str:
        if self.simulated:
            return f"simulated:{self.profile}"
        return ",".join(self.engines)

    @property
    def long_label(self) -> str:
        if self.simulated:
            return (f"simulated:{self.profile}, time-scale {self.time_scale:g} "
                    f"({len(self.engines)} engines, CPU stand-ins, not GPUs)")
        return f"engines {', '.join(self.engines)}"
