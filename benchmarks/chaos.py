"""Chaos: two gateway replicas behind one address, one killed with SIGKILL mid-run.

Starts a redis-server (or uses ``--redis``), two simulated engines, two
``parrot-gateway serve`` processes on that Redis and a round-robin TCP proxy in
front of them (a new connection goes to the next replica; one that refuses the
connection is skipped, as nginx's ``proxy_next_upstream`` does). Then
``--sessions`` applications run at once through the proxy, each a small
map-reduce submitted whole (``PUT doc``, ``--maps`` async maps, an async
reduce, a long poll of its output); ``--kill-after`` seconds in, one replica is
killed with SIGKILL. Clients retry what the dead replica dropped, as any client
of a load-balanced service must: transport errors and 502s are retried, and a retried
submission answered 409 (its first attempt was accepted) counts as accepted.

Reported: sessions, sessions in flight at the kill, sessions completed (the
reduce's value ready) and lost, time to adoption (kill -> the survivor's
``parrot_adopted_requests_total`` moves), and the added latency: the same load
is first run with both replicas alive (``no_kill_ms``), then again with the
kill (``across_kill_ms``: the sessions in flight at the kill).

    python -m benchmarks.chaos --sessions 200
    python -m benchmarks.chaos --redis redis+cluster://127.0.0.1:7000 --sessions 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common.serving import free_port

from .metrics import percentile

CHAT = "/v1/chat/completions"
RETRYABLE = (httpx.TransportError,)


# ----------------------------------------------------------------- the proxy


class RoundRobinProxy:
    """A TCP proxy in its own thread: each connection goes to the next backend that
    accepts it (connection refused: try the next one)."""

    def __init__(self, backends: list[tuple[str, int]], host: str = "127.0.0.1") -> None:
        self.backends = backends
        self.host = host
        self.port = free_port(host)
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rr-proxy")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RoundRobinProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port))
        self._ready.set()
        loop.run_forever()
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection(host, port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        ureader, uwriter = upstream

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pump(reader, uwriter), pump(ureader, writer))
        except asyncio.CancelledError:  # the proxy stops
            writer.close()
            uwriter.close()


# ----------------------------------------------------------------- the load


@dataclass
class SessionResult:
    sid: str
    start: float
    end: float | None = None
    ok: bool = False
    error: str | None = None
    retries: int = 0


@dataclass
class ChaosReport:
    sessions: int
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    in_flight_at_kill: int = 0
    victim_engine_inflight: int = 0  # requests the killed replica had on its engines
    adoption_s: float | None = None
    adopted: int = 0
    retries: int = 0
    no_kill_ms: dict[str, Any] = field(default_factory=dict)  # the same load, nobody killed
    before_kill_ms: dict[str, Any] = field(default_factory=dict)  # sessions done before it
    across_kill_ms: dict[str, Any] = field(default_factory=dict)  # in flight at the kill
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, lost=self.lost[:20])


async def _call(client: httpx.AsyncClient, res: SessionResult, method: str, path: str,
                deadline: float, **kw: Any) -> httpx.Response:
    """One request, retried on transport errors (a connection to the dead replica) and on
    502 (the replica that owned the session died under a request relayed to it)."""
    while True:
        try:
            r = await client.request(method, path, **kw)
            if r.status_code != 502 or time.monotonic() > deadline:
                return r
        except RETRYABLE:
            if time.monotonic() > deadline:
                raise
        res.retries += 1
        await asyncio.sleep(0.2)


async def _session(client: httpx.AsyncClient, i: int, maps: int, max_tokens: int,
                   timeout: float) -> SessionResult:
    sid = f"chaos-{uuid.uuid4().hex[:8]}-{i}"
    res = SessionResult(sid, time.monotonic())
    deadline = res.start + timeout
    try:
        h = {"X-Parrot-Session": sid, "X-Parrot-Async": "1"}
        subs = [(f"m{k}", f"Summarize part {k} of {{{{doc}}}}", "throughput") for k in range(maps)]
        subs.append(("final", "Combine: " + " ".join("{{m%d}}" % k for k in range(maps)), "latency"))
        for out, prompt, criteria in subs:
            r = await _call(client, res, "POST", CHAT, deadline, headers={
                **h, "X-Parrot-Output": out, "X-Parrot-Criteria": criteria},
                json={"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
            if r.status_code not in (200, 409):  # 409: an earlier attempt was accepted
                raise RuntimeError(f"submit {out}: {r.status_code} {r.text[:200]}")
        r = await _call(client, res, "PUT", f"/v1/sessions/{sid}/variables/doc", deadline,
                        json={"value": f"document {i}: " + "lorem ipsum " * (5 + i % 20)})
        if r.status_code not in (200, 409):
            raise RuntimeError(f"put: {r.status_code} {r.text[:200]}")
        while True:
            r = await _call(client, res, "GET", f"/v1/sessions/{sid}/variables/final", deadline,
                            params={"wait": 10})
            v = r.json()
            if r.status_code == 200 and v["status"] != "pending":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"final still {v} at the deadline")
        if v["status"] != "ready":
            raise RuntimeError(f"final {v['status']}: {v['error']}")
        res.ok = True
    except Exception as exc:  # every session ends with a verdict
        res.error = f"{type(exc).__name__}: {exc}"
    res.end = time.monotonic()
    return res


async def _metric(client: httpx.AsyncClient, url: str, sample: str) -> float:
    """A replica's ``sample`` from its /metrics, summed over labels; 0 if unreadable."""
    try:
        text = (await client.get(url + "/metrics")).text
    except httpx.HTTPError:
        return 0.0
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == sample)


async def _until_busy(url: str, wait_s: float) -> int:
    """Wait (at most ``wait_s``) until the replica at ``url`` runs requests on its engines,
    so that a kill then hits work it accepted: on a loaded machine the first requests
    were still being registered at a fixed kill time, and the victim died holding nothing
    to adopt. Returns what it had in flight."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(timeout=2) as c:
        while True:
            n = int(await _metric(c, url, "parrot_engine_inflight_requests"))
            if n > 0 or time.monotonic() > deadline:
                return n
            await asyncio.sleep(0.01)


async def _watch_adoption(url: str, since: float, stop: asyncio.Event) -> tuple[float | None, int]:
    """Poll a replica's metrics until it reports adopted requests; (seconds, count)."""
    async with httpx.AsyncClient(timeout=5) as c:
        while not stop.is_set():
            n = int(await _metric(c, url, "parrot_adopted_requests_total"))
            if n > 0:
                return time.monotonic() - since, n
            await asyncio.sleep(0.05)
    return None, 0


def _latencies(results: list[SessionResult]) -> dict[str, Any]:
    xs = [(r.end - r.start) * 1000 for r in results if r.ok and r.end]
    return {"n": len(xs), "p50": round(percentile(xs, 50), 1), "p99": round(percentile(xs, 99), 1),
            "max": round(max(xs), 1) if xs else None}


async def run_chaos(proxy_url: str, replicas: list[tuple[str, subprocess.Popen[bytes]]], *,
                    sessions: int, maps: int = 2, max_tokens: int = 24, kill_after: float = 1.0,
                    timeout: float = 120.0, baseline: bool = True) -> ChaosReport:
    report = ChaosReport(sessions)
    limits = httpx.Limits(max_connections=sessions + 8, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=proxy_url, timeout=30, limits=limits) as client:
        if baseline:  # the same load with both replicas alive: what the kill adds to
            await asyncio.gather(*(_session(client, i, maps, max_tokens, timeout)  # warm-up
                                   for i in range(min(sessions, 20))))
            base = await asyncio.gather(*(_session(client, i, maps, max_tokens, timeout)
                                          for i in range(sessions)))
            report.no_kill_ms = _latencies(base)
            report.lost += [f"{r.sid} (no kill): {r.error}" for r in base if not r.ok]
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_session(client, i, maps, max_tokens, timeout))
                 for i in range(sessions)]
        await asyncio.sleep(kill_after)
        victim_url, victim = replicas[0]
        report.victim_engine_inflight = await _until_busy(victim_url, 10.0)
        survivor_url = replicas[1][0]
        stop = asyncio.Event()
        victim.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        watcher = asyncio.create_task(_watch_adoption(survivor_url, t_kill, stop))
        results = await asyncio.gather(*tasks)
        stop.set()
        report.adoption_s, report.adopted = await watcher
        report.wall_s = time.monotonic() - t0
    report.in_flight_at_kill = sum(1 for r in results if r.end is None or r.end >= t_kill)
    report.completed = sum(1 for r in results if r.ok)
    report.lost += [f"{r.sid}: {r.error}" for r in results if not r.ok]
    report.retries = sum(r.retries for r in results)
    report.before_kill_ms = _latencies([r for r in results if r.end and r.end < t_kill])
    report.across_kill_ms = _latencies([r for r in results if r.end and r.end >= t_kill])
    return report


# ----------------------------------------------------------------- processes


def start_replica(redis_url: str, backends: list[str], log: Path,
                  env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """``parrot-gateway serve`` as a child process on a free port; (url, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--redis", redis_url, "--log-level", "warning"]
    for b in backends:
        cmd += ["--backend", b]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"replica exited ({log.read_text()[-2000:]})")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("replica not ready in 60 s")
        time.sleep(0.1)


def chaos(sessions: int, *, redis_url: str | None = None, engines: int = 2, time_scale: float = 0.1,
          maps: int = 2, max_tokens: int = 24, kill_after: float = 1.0, timeout: float = 120.0,
          log_dir: Path | None = None, baseline: bool = True) -> ChaosReport:
    """The whole run: start everything, run, kill, report, stop everything."""
    from gateway.embedded import start_sim_engines
    from gateway.redis_server import RedisServer

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parrot-chaos-")))
        logs = log_dir or tmp
        logs.mkdir(parents=True, exist_ok=True)
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        sims = start_sim_engines(engines, profile="h100-llama3-8b", time_scale=time_scale)
        stack.callback(sims.stop)
        replicas = []
        for i in range(2):
            url, proc = start_replica(redis_url, sims.urls, logs / f"replica{i}.log")
            stack.callback(lambda p=proc: (p.kill(), p.wait()))
            replicas.append((url, proc))
        proxy = RoundRobinProxy([("127.0.0.1", int(u.rsplit(":", 1)[1])) for u, _ in replicas])
        proxy.start()
        stack.callback(proxy.stop)
        return asyncio.run(run_chaos(proxy.url, replicas, sessions=sessions, maps=maps,
                                     max_tokens=max_tokens, kill_after=kill_after,
                                     timeout=timeout, baseline=baseline))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--maps", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--kill-after", type=float, default=1.0, help="seconds into the run")
    p.add_argument("--time-scale", type=float, default=0.1, help="of the simulated engines")
    p.add_argument("--redis", help="Redis URL (redis+cluster://... for a cluster)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without a kill")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    report = chaos(args.sessions, redis_url=args.redis, maps=args.maps, max_tokens=args.max_tokens,
                   kill_after=args.kill_after, time_scale=args.time_scale,
                   baseline=not args.no_baseline)
    text = json.dumps(report.as_dict(), indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if not report.lost else 1


if __name__ == "__main__":
    sys.exit(main())
