"""The semantic path's own cost: gateway CPU per semantic request and pipeline latency.

Against the ``instant`` simulated engine (a microsecond per step), so whatever
time and CPU is spent is the gateway's. ``--sessions`` applications run at
``--concurrency`` at a time, each a small map-reduce submitted whole (async):
``--maps`` maps of ``{{doc}}`` and one reduce of every map, then ``PUT doc``,
then a long poll of the reduce's output.

Reported:

- **CPU per semantic request**: the gateway process's CPU time (user + system,
  from /proc) over the run, divided by the semantic requests (maps + reduces).
  The PUTs and long polls are included in the numerator, so this is an upper
  bound. ``tokenize_ms`` is what the prompt measurement (``prompt_shape``:
  chat template + tokenizer + block hashes) of the same prompts costs in this
  process, for subtracting it;
- **pipeline latency** (``pipeline_ms_le``): from a request's last input
  variable being written to the request being handed to the dispatcher, as the
  gateway measures it (histogram ``parrot_pipeline_seconds``: quantiles are
  bucket upper bounds); ``finish_to_queued_ms`` is the same seen from the
  session graphs, from the producer's ``finished_at`` (set just before its
  write, so the write is included) to the reduce's ``queued_at``;
- application latency (PUT to the reduce's value) percentiles.

    python -m benchmarks.semantic_overhead --sessions 400 --concurrency 200

Figures from a machine other processes load are indicative only.
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
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from .metrics import percentile
from .services import Services

CHAT = "/v1/chat/completions"


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def map_prompt(i: int) -> str:
    return f"Summarize part {i} of this document in one line: {{{{doc}}}}"


def reduce_prompt(maps: int) -> str:
    return "Combine these summaries: " + " ".join("{{m%d}}" % i for i in range(maps))


async def _app(client: httpx.AsyncClient, maps: int, max_tokens: int, out: dict[str, Any]) -> None:
    sid = "so-" + uuid.uuid4().hex[:12]
    h = {"X-Parrot-Session": sid, "X-Parrot-Async": "1"}
    for i in range(maps):
        r = await client.post(CHAT, headers={**h, "X-Parrot-Output": f"m{i}",
                                             "X-Parrot-Criteria": "throughput"},
                              json={"messages": [{"role": "user", "content": map_prompt(i)}],
                                    "max_tokens": max_tokens, "ignore_eos": True})
        r.raise_for_status()
    r = await client.post(CHAT, headers={**h, "X-Parrot-Output": "final"},
                          json={"messages": [{"role": "user", "content": reduce_prompt(maps)}],
                                "max_tokens": max_tokens, "ignore_eos": True})
    r.raise_for_status()
    t0 = time.monotonic()
    r = await client.put(f"/v1/sessions/{sid}/variables/doc",
                         json={"value": f"document {sid}: " + "lorem ipsum dolor " * 20})
    r.raise_for_status()
    while True:
        v = (await client.get(f"/v1/sessions/{sid}/variables/final", params={"wait": 30})).json()
        if v["status"] != "pending":
            break
    if v["status"] != "ready":
        out["errors"].append(f"{sid}: {v}")
    out["app_s"].append(time.monotonic() - t0)
    out["sids"].append(sid)


def pipeline_gaps(graph: dict[str, Any]) -> list[float]:
    """Seconds from the last producer's finish to each consumer's hand-off."""
    reqs = graph["requests"]
    by_output = {r["output"]: r for r in reqs if r["output"]}
    gaps = []
    for r in reqs:
        producers = [by_output[v] for v in r["inputs"] if v in by_output]
        if not producers or r.get("queued_at") is None:
            continue
        done = [p["finished_at"] for p in producers if p.get("finished_at") is not None]
        if len(done) == len(producers):
            gaps.append(r["queued_at"] - max(done))
    return gaps


def stage_times(graph: dict[str, Any]) -> dict[str, list[float]]:
    """Where each request's time went: created -> ready (inputs) -> queued (handed to the
    dispatcher) -> started (on an engine) -> finished; settle = the next request's view."""
    out: dict[str, list[float]] = {"wait_inputs": [], "prepare": [], "queued": [], "run": [],
                                   "settle": []}
    for r in graph["requests"]:
        c, rd, q, st, f = (r.get(k) for k in ("created_at", "ready_at", "queued_at", "started_at",
                                               "finished_at"))
        if None in (c, rd, q, st, f):
            continue
        out["wait_inputs"].append(rd - c)
        out["prepare"].append(q - rd)
        out["queued"].append(st - q)
        out["run"].append(f - st)
    return out


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of one Prometheus histogram: upper bound -> count."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile ``q`` of the observations between
    two scrapes: "p99 <= x ms" at the histogram's resolution."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for b, c in zip(bounds, counts):
        if c >= q * counts[-1]:
            return b * 1000
    return None


def tokenize_ms(maps: int) -> float:
    """CPU ms of measuring one application's prompts (as the gateway does), per request."""
    from gateway.completion import prompt_shape

    doc = "document so-0123456789ab: " + "lorem ipsum dolor " * 20
    bodies = [{"messages": [{"role": "user", "content": map_prompt(i).replace("{{doc}}", doc)}]}
              for i in range(maps)]
    bodies.append({"messages": [{"role": "user", "content": reduce_prompt(maps).replace(
        "{{", "").replace("}}", " summary text of eight tokens or so")}]})
    for b in bodies:  # warm up (tokenizer load)
        prompt_shape("chat", b, 32)
    n = 50
    t = time.process_time()
    for _ in range(n):
        for b in bodies:
            prompt_shape("chat", b, 32)
    return (time.process_time() - t) * 1000 / (n * len(bodies))


async def run(url: str, pid: int, *, sessions: int, concurrency: int, maps: int,
              max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {"app_s": [], "sids": [], "errors": []}
    limits = httpx.Limits(max_connections=concurrency + 8, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await _app(client, maps, max_tokens, {"app_s": [], "sids": [], "errors": []})  # warm-up
        left = sessions

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _app(client, maps, max_tokens, out)

        name = "parrot_pipeline_seconds"
        hist0 = histogram((await client.get("/metrics")).text, name)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        hist1 = histogram((await client.get("/metrics")).text, name)
        gaps: list[float] = []
        phases: dict[str, list[float]] = {"wait_inputs": [], "prepare": [], "queued": [], "run": [],
                                          "settle": []}
        for sid in out["sids"]:
            graph = (await client.get(f"/v1/sessions/{sid}")).json()
            gaps += pipeline_gaps(graph)
            for k, v in stage_times(graph).items():
                phases[k] += v
    semantic = sessions * (maps + 1)
    ms = [g * 1000 for g in gaps]
    app_ms = [a * 1000 for a in out["app_s"]]
    return {
        "sessions": sessions, "concurrency": concurrency, "maps": maps,
        "semantic_requests": semantic, "wall_s": round(wall, 2),
        "gateway_cpu_s": round(cpu, 3),
        "cpu_ms_per_semantic_request": round(cpu * 1000 / semantic, 3),
        "gateway_cpu_utilisation": round(cpu / wall, 3),
        # Measured in the gateway: last input written -> handed to the dispatcher.
        "pipeline_ms_le": {"p50": bucket_quantile(hist0, hist1, 0.5),
                           "p90": bucket_quantile(hist0, hist1, 0.9),
                           "p99": bucket_quantile(hist0, hist1, 0.99),
                           "n": (hist1.get(float("inf"), 0) - hist0.get(float("inf"), 0))},
        # From the session graphs: the last producer's finish (before its write) -> the
        # consumer handed to the dispatcher; includes the producer's write.
        "finish_to_queued_ms": {"n": len(ms), "p50": round(percentile(ms, 50), 3),
                        "p90": round(percentile(ms, 90), 3), "p99": round(percentile(ms, 99), 3),
                        "max": round(max(ms), 3) if ms else None},
        "app_ms": {"p50": round(percentile(app_ms, 50), 1), "p99": round(percentile(app_ms, 99), 1)},
        "stage_ms_p50_p99": {k: [round(percentile([x * 1000 for x in v], 50), 2),
                                 round(percentile([x * 1000 for x in v], 99), 2)]
                             for k, v in phases.items()},
        "errors": out["errors"][:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.semantic_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--maps", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--gateway-args", default="", help="extra `serve` flags, space separated")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--py-spy", help="record the gateway with py-spy (collapsed stacks) here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="parrot-so-") as tmp, Services(Path(tmp)) as svc:
        svc.start_engines(args.engines, "instant", 1.0)
        svc.start_gateway(args.gateway_args.split())
        assert svc.gateway is not None
        pid = next(proc.pid for name, proc in svc.procs if name == "gateway")
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "-f", "raw", "--gil",
                                    "-o", args.py_spy, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            result = asyncio.run(run(svc.gateway, pid, sessions=args.sessions,
                                     concurrency=args.concurrency, maps=args.maps,
                                     max_tokens=args.max_tokens))
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
    result["tokenize_ms_per_request"] = round(tokenize_ms(args.maps), 3)
    result["cpu_ms_per_semantic_request_ex_tokenize"] = round(
        result["cpu_ms_per_semantic_request"] - result["tokenize_ms_per_request"], 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
