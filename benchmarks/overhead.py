"""Gateway overhead: what a proxy adds in front of a near-zero-latency engine.

One simulated engine with the ``instant`` profile (a microsecond per step)
answers every request; ``C`` closed-loop clients send ``N`` small chat
requests through each system in turn: directly to the engine, through
parrot-gateway (transparent-proxy path, no semantic headers), through SGLang
Model Gateway (``smg``), and through the LiteLLM proxy when it is installed.
Reported: p50/p99 latency, requests/s at that concurrency, and latency added
over direct. Processes per system are recorded in the output, since on a
small machine every proxy competes with the engine and client for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from common.serving import free_port

from .metrics import percentile
from .services import Services, _wait_http

WARMUP = 20  # requests each system gets before it is measured

PROCESSES = {
    "direct": "client (1 process, asyncio) -> engine (1 process)",
    "direct-repeat": "as direct, measured last (order effects); added_* use the faster direct run",
    "parrot-gateway": "client -> parrot-gateway (1 uvicorn worker process, asyncio) + redis-server "
                      "(1 process) -> engine",
    "parrot-gateway-2w": "client -> parrot-gateway --workers 2 (supervisor + 2 worker processes, one "
                         "port, each a replica) + its own redis-server -> engine",
    "sglang-router": "client -> smg (1 process, Rust/tokio, worker threads = cores) -> engine",
    "litellm": "client -> litellm proxy (1 uvicorn worker process) -> engine",
}


async def load(url: str, model: str, concurrency: int, requests: int, warmup: int = WARMUP,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers share ``requests`` calls; latencies in ms. Each
    request is a new one-turn conversation (its own question), as independent users send."""

    def body(i: int) -> dict[str, Any]:
        return {"model": model, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Question {i}: say something short. " * 8}]}
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        for i in range(warmup):
            await client.post(url + "/v1/chat/completions", json=body(-1 - i))
        left = requests

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/chat/completions", json=body(left))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "mean_ms": round(sum(lat) / len(lat), 3) if lat else None,
        "rps": round(len(lat) / elapsed, 1),
        "ok": len(lat),
        "errors": errors,
    }


LITELLM_KEY = "sk-parrot-bench-" + secrets.token_hex(8)  # loopback-only proxy; LiteLLM refuses no key


def _start_litellm(svc: Services, engine: str, model: str) -> tuple[str | None, str]:
    binary = shutil.which("litellm")
    if binary is None:
        return None, ("litellm not installed; `pip install 'litellm[proxy]'` would be needed "
                      "(not installed by this benchmark); skipped")
    cfg = svc.log_dir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {engine}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    proc = svc._spawn("litellm", [binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                                  "--num_workers", "1"])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health/liveliness", proc, 90, "litellm")
    except Exception as exc:  # noqa: BLE001
        return None, f"litellm failed to start: {exc}; skipped"
    return url, "litellm proxy, 1 worker"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and all its live descendants (workers)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def run_overhead(out: Path, concurrency: int = 16, requests: int = 400, profile: str = "instant",
                 log: Any = print, workers: int = 2) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"engine": f"simulated:{profile}, time-scale 1 (near-zero engine time)",
                              "concurrency": concurrency, "requests": requests, "systems": {},
                              "processes": PROCESSES, "notes": []}
    with Services(out / "logs" / "overhead") as svc:
        svc.start_engines(1, profile, 1.0)
        engine = svc.engines[0]
        svc.start_gateway()
        targets: dict[str, str] = {"direct": engine, "parrot-gateway": svc.gateway or ""}
        if workers > 1:
            targets[f"parrot-gateway-{workers}w"] = svc.start_gateway(
                ["--workers", str(workers)], name=f"gateway{workers}w")
        if svc.start_router():
            targets["sglang-router"] = svc.router or ""
        else:
            result["notes"].append(svc.router_note)
        url, note = _start_litellm(svc, engine, svc.model)
        if url:
            targets["litellm"] = url
        else:
            result["notes"].append(note)
        targets["direct-repeat"] = engine  # order effects: the engine warms up over the run
        roles = {"parrot-gateway": "gateway", f"parrot-gateway-{workers}w": f"gateway{workers}w",
                 "sglang-router": "smg", "litellm": "litellm"}
        pids = svc.pids()
        for name, target in targets.items():
            log(f"[overhead] {name}: {requests} requests at concurrency {concurrency} ...")
            headers = {"Authorization": f"Bearer {LITELLM_KEY}"} if name == "litellm" else None
            proxy = pids.get(roles.get(name, ""))
            redis = (pids.get("redis" if name == "parrot-gateway" else f"redis-{roles[name]}")
                     if name.startswith("parrot") else None)
            before = (cpu_seconds(proxy), cpu_seconds(redis))
            m = asyncio.run(load(target, svc.model, concurrency, requests, headers=headers))
            after = (cpu_seconds(proxy), cpu_seconds(redis))
            if proxy is not None and m["ok"]:
                # includes the warm-up requests, which are few; per request of the whole run
                calls = m["ok"] + WARMUP
                m["cpu_ms_per_request"] = round((after[0] - before[0]) * 1000 / calls, 3)
                if redis is not None:
                    m["redis_cpu_ms_per_request"] = round((after[1] - before[1]) * 1000 / calls, 3)
            result["systems"][name] = m
    direct = min((result["systems"]["direct"], result["systems"]["direct-repeat"]),
                 key=lambda m: m["p50_ms"])
    for m in result["systems"].values():
        m["added_p50_ms"] = round(m["p50_ms"] - direct["p50_ms"], 3)
        m["added_p99_ms"] = round(m["p99_ms"] - direct["p99_ms"], 3)
    (out / "overhead.json").write_text(json.dumps(result, indent=2))
    _chart(result, out / "overhead.png")
    return result


def _chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["systems"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = range(len(names))
    a.bar([x - 0.2 for x in xs], [result["systems"][n]["p50_ms"] for n in names], 0.4, label="p50")
    a.bar([x + 0.2 for x in xs], [result["systems"][n]["p99_ms"] for n in names], 0.4, label="p99")
    a.set_xticks(list(xs), names, fontsize=7)
    a.set_ylabel("latency (ms, wall)")
    a.legend(fontsize=7)
    b.bar(list(xs), [result["systems"][n]["rps"] for n in names], color="#2ca02c")
    b.set_xticks(list(xs), names, fontsize=7)
    b.set_ylabel(f"requests/s at concurrency {result['concurrency']}")
    fig.suptitle(f"Proxy overhead, {result['engine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_overhead_cli(args: argparse.Namespace, out: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    res = run_overhead(out, args.concurrency, args.requests,
                       log=lambda m: console.print(m, markup=False, highlight=False),
                       workers=getattr(args, "gateway_workers", 2))
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["overhead"] = res
        summary_path.write_text(json.dumps(summary, indent=2))
    t = Table(title=f"Overhead - {res['engine']} - concurrency {res['concurrency']}")
    for col in ("system", "p50 ms", "p99 ms", "req/s", "+p50 ms", "+p99 ms", "CPU ms/req",
                "redis ms/req", "errors"):
        t.add_column(col)
    for name, m in res["systems"].items():
        t.add_row(name, str(m["p50_ms"]), str(m["p99_ms"]), str(m["rps"]), str(m["added_p50_ms"]),
                  str(m["added_p99_ms"]), str(m.get("cpu_ms_per_request", "-")),
                  str(m.get("redis_cpu_ms_per_request", "-")), str(m["errors"]))
    Console(width=120).print(t)
    for n in res["notes"]:
        console.print(f"note: {n}", markup=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_overhead_cli(argparse.Namespace(concurrency=16, requests=400, gateway_workers=2),
                              Path("bench-out")))
