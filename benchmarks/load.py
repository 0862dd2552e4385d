"""Load test: N concurrent sessions, each a small DAG submitted with semantic variables.

Per session: PUT ``doc``; ``a = f({{doc}})`` and ``b = g({{doc}})`` submitted async;
``h({{a}}, {{b}})`` sent sync (held until both are ready). A request is *lost* when it
gets no answer, a transport error, or a non-200 without an OpenAI error body; the
load holds when nothing is lost and every session's variables end ``ready``.

    python -m benchmarks.load --sessions 500            # own Redis, engines, gateway
    python -m benchmarks.load --url http://127.0.0.1:8000 --sessions 500

Prints the latency distribution (p50/p90/p99) of whole sessions and of each step.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

CHAT = "/v1/chat/completions"


@dataclass
class LoadReport:
    sessions: int
    requests: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count (answered, not ok)
    lost: list[str] = field(default_factory=list)  # what never got a proper answer
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    wall_s: float = 0.0

    def percentiles(self) -> dict[str, dict[str, float]]:
        return {k: summarize(v) for k, v in sorted(self.latencies.items())}

    def table(self) -> str:
        lines = [f"{self.sessions} sessions, {self.requests} requests in {self.wall_s:.1f}s "
                 f"({self.requests / max(self.wall_s, 1e-9):.0f} req/s): ok={self.ok} "
                 f"failed={dict(self.failed)} lost={len(self.lost)}",
                 f"{'latency (ms)':<14}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
        for name, p in self.percentiles().items():
            lines.append(f"{name:<14}{p['n']:>6.0f}{p['p50']:>9.1f}{p['p90']:>9.1f}"
                         f"{p['p99']:>9.1f}{p['max']:>9.1f}")
        return "\n".join(lines)


def summarize(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    if not s:
        return {"n": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"n": len(s), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1] * 1000}


async def _session(client: httpx.AsyncClient, report: LoadReport, i: int, max_tokens: int) -> None:
    sid = f"load-{uuid.uuid4().hex[:8]}-{i}"
    t_session = time.monotonic()

    async def call(name: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        report.requests += 1
        t0 = time.monotonic()
        try:
            r = await client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            report.lost.append(f"{sid}/{name}: {type(exc).__name__}")
            return None
        report.latencies[name].append(time.monotonic() - t0)
        if r.status_code == 200:
            report.ok += 1
            return r
        try:
            code = r.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            report.lost.append(f"{sid}/{name}: {r.status_code} without an error body")
            return None
        report.failed[f"{r.status_code}:{code}"] = report.failed.get(f"{r.status_code}:{code}", 0) + 1
        return None

    base = {"X-Parrot-Session": sid}
    if await call("put", "PUT", f"/v1/sessions/{sid}/variables/doc",
                  json={"value": f"document {i}: " + "lorem ipsum " * (i % 20)}) is None:
        return
    for out, prompt in (("a", "Summarize: {{doc}}"), ("b", "List the topics of: {{doc}}")):
        await call(f"async_{out}", "POST", CHAT,
                   headers={**base, "X-Parrot-Async": "1", "X-Parrot-Output": out},
                   json={"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
    r = await call("sync_final", "POST", CHAT, headers=base, json={
        "messages": [{"role": "user", "content": "Combine {{a}} with {{b}}"}],
        "max_tokens": max_tokens})
    if r is not None:
        if not r.json()["choices"][0]["message"]["content"]:
            report.lost.append(f"{sid}/sync_final: empty content")
        report.latencies["session"].append(time.monotonic() - t_session)
    g = await call("graph", "GET", f"/v1/sessions/{sid}")
    if g is not None:
        bad = [x for x in g.json()["variables"] if x["status"] != "ready"]
        if bad:
            report.lost.append(f"{sid}: variables not ready: {[x['name'] for x in bad]}")


async def run_load(url: str, sessions: int, *, max_tokens: int = 16, timeout: float = 120.0,
                   headers: dict[str, str] | None = None) -> LoadReport:
    """Start ``sessions`` sessions at once against the gateway at ``url``."""
    report = LoadReport(sessions)
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close
    # them under us: a POST on a connection the server is closing fails (ReadError).
    limits = httpx.Limits(max_connections=sessions + 16, max_keepalive_connections=sessions + 16,
                          keepalive_expiry=2.0)
    # A connection attempt that gets no answer is retried, as the OpenAI SDK does (nothing
    # was sent yet). After a test that opened thousands of loopback connections, one SYN
    # of 500 went unanswered until the kernel's retransmissions outlasted the timeout
    # (test_load_500_sessions after test_cluster's failover: 2496 of 2500 requests).
    transport = httpx.AsyncHTTPTransport(limits=limits, retries=3)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=5.0),
                                 transport=transport, headers=headers or {}) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(_session(client, report, i, max_tokens) for i in range(sessions)))
        report.wall_s = time.monotonic() - t0
    return report


def run_local(sessions: int, *, engines: int = 2, time_scale: float = 0.01, max_tokens: int = 16,
              timeout: float = 120.0) -> LoadReport:
    """Redis, simulated engines and the gateway as child processes (the way it runs, and
    not sharing this process's interpreter lock with the load generator), then the load."""
    import tempfile
    from pathlib import Path

    from .services import Services

    with tempfile.TemporaryDirectory(prefix="parrot-load-") as tmp, Services(Path(tmp)) as svc:
        svc.start_engines(engines, "h100-llama3-8b", time_scale)
        svc.start_gateway()
        assert svc.gateway is not None
        return asyncio.run(run_load(svc.gateway, sessions, max_tokens=max_tokens,
                                    timeout=timeout))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="gateway URL (default: start Redis, engines and a gateway here)")
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--time-scale", type=float, default=0.01)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    if args.url is not None:
        report = asyncio.run(run_load(args.url, args.sessions, max_tokens=args.max_tokens))
    else:
        report = run_local(args.sessions, engines=args.engines, time_scale=args.time_scale,
                           max_tokens=args.max_tokens)
    print(report.table())
    for line in report.lost[:20]:
        print("LOST", line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sessions": report.sessions, "requests": report.requests, "ok": report.ok,
                       "failed": report.failed, "lost": report.lost, "wall_s": report.wall_s,
                       "latency_ms": report.percentiles()}, f, indent=2)
    return 0 if not report.lost and not report.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
