"""Plain traffic under a closed loop: what a chat user feels through each proxy.

``C`` streams (``--concurrency``, a list: one run per value and system) each send
requests back to back: a fresh random ~1,024-token prompt (so no cache helps),
128 output tokens, ``stream: true``. Measured per request from the client: time to
first token (TTFT), mean inter-token latency and end-to-end latency; per run:
requests/s. Systems, in one invocation on the same engines, caches flushed
between them: ``baseline`` (round robin straight to the engines),
``sglang-router`` (SGLang Model Gateway, cache_aware) and ``gateway-plain``
(parrot-gateway, no semantic headers). It is what an independent OpenAI-API
load tool measures, driven here by the bench harness's lean HTTP client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .httpclient import make_client
from .metrics import percentile
from .services import Services
from .systems import _Sse
from .workloads import synthetic_text

SYSTEMS = ("baseline", "sglang-router", "gateway-plain")


@dataclass
class Sample:
    ttft_s: float
    e2e_s: float
    tokens: int

    @property
    def itl_s(self) -> float:
        return (self.e2e_s - self.ttft_s) / max(1, self.tokens - 1)


@dataclass
class Run:
    system: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        s = self.samples
        ttft = [x.ttft_s for x in s]
        e2e = [x.e2e_s for x in s]
        itl = [x.itl_s for x in s]
        r = lambda v: round(v * 1000, 2)  # noqa: E731 - ms
        return {
            "requests": len(s), "errors": self.errors,
            "ttft_p50_ms": r(percentile(ttft, 50)), "ttft_p95_ms": r(percentile(ttft, 95)),
            "ttft_mean_ms": r(sum(ttft) / len(ttft)) if ttft else None,
            "itl_mean_ms": r(sum(itl) / len(itl)) if itl else None,
            "e2e_mean_ms": r(sum(e2e) / len(e2e)) if e2e else None,
            "e2e_p95_ms": r(percentile(e2e, 95)),
            "throughput_rps": round(len(s) / self.wall_s, 3) if self.wall_s else None,
        }


async def closed_loop(urls: list[str], model: str, concurrency: int, requests: int,
                      prompt_tokens: int, output_tokens: int, seed: int, system: str) -> Run:
    run = Run(system, concurrency)
    rr = itertools.cycle(urls)
    counter = itertools.count()
    async with make_client("lean") as http:
        async def stream() -> None:
            while True:
                i = next(counter)
                if i >= requests:
                    return
                body = orjson.dumps({
                    "model": model, "stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": synthetic_text(prompt_tokens, seed + i)}],
                    "max_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
                })
                sse = _Sse()
                t0 = time.time()
                resp = await http.request("POST", next(rr) + "/v1/chat/completions", body,
                                          {"Content-Type": "application/json"}, on_chunk=sse.feed)
                end = time.time()
                if resp.status != 200 or sse.error is not None or sse.first is None:
                    run.errors += 1
                    continue
                tokens = int((sse.usage or {}).get("completion_tokens") or len(sse.parts))
                run.samples.append(Sample(sse.first - t0, end - t0, tokens))

        t0 = time.time()
        await asyncio.gather(*(stream() for _ in range(concurrency)))
        run.wall_s = time.time() - t0
    return run


def run_plain(out: Path, concurrencies: list[int], requests: int = 300, engines: int = 2,
              profile: str = "h100-llama3-8b", systems: tuple[str, ...] = SYSTEMS,
              prompt_tokens: int = 1024, output_tokens: int = 128, time_scale: float = 1.0,
              log: Any = print) -> dict[str, Any]:
    """One closed-loop run per concurrency and system; times are wall (at time-scale 1,
    what the engines' GPUs would take; any other scale is for CI only)."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "engines": f"simulated:{profile}, time-scale {time_scale:g} ({engines} engines, "
                   "CPU stand-ins, not GPUs)",
        "time_scale": time_scale,
        "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "requests": requests,
        "method": __doc__.strip().splitlines()[0], "runs": [], "notes": [],
    }
    with Services(out / "logs" / "plain") as svc:
        svc.start_engines(engines, profile, time_scale)
        targets: dict[str, list[str]] = {"baseline": list(svc.engines)}
        if "gateway-plain" in systems:
            targets["gateway-plain"] = [svc.start_gateway()]
        if "sglang-router" in systems:
            if svc.start_router():
                targets["sglang-router"] = [svc.router or ""]
            else:
                result["notes"].append(svc.router_note)
        time.sleep(1.0)
        for c in concurrencies:
            for name in systems:
                if name not in targets:
                    continue

                async def one(urls: list[str] = targets[name], c: int = c, name: str = name) -> Run:
                    import httpx

                    async with httpx.AsyncClient() as ctl:
                        await svc.flush(ctl)
                    return await closed_loop(urls, svc.model, c, requests, prompt_tokens,
                                             output_tokens, seed=10_000 * c, system=name)

                run = asyncio.run(one())
                entry = {"system": name, "concurrency": c, **run.summary()}
                result["runs"].append(entry)
                log(f"[plain c={c}] {name}: TTFT p50 {entry['ttft_p50_ms']} / p95 "
                    f"{entry['ttft_p95_ms']} ms, ITL {entry['itl_mean_ms']} ms, e2e mean "
                    f"{entry['e2e_mean_ms']} ms, {entry['throughput_rps']} req/s, errors {run.errors}")
    (out / "plain.json").write_text(json.dumps(result, indent=2))
    _chart(result, out / "plain_ttft.png")
    return result


def _chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in SYSTEMS:
        runs = [r for r in result["runs"] if r["system"] == name]
        if not runs:
            continue
        cs = [r["concurrency"] for r in runs]
        a.plot(cs, [r["ttft_p50_ms"] for r in runs], marker="o", label=f"{name} p50")
        a.plot(cs, [r["ttft_p95_ms"] for r in runs], marker="x", linestyle="--", label=f"{name} p95")
        b.plot(cs, [r["throughput_rps"] for r in runs], marker="o", label=name)
    a.set_xlabel("concurrent streams")
    a.set_ylabel("time to first token (ms)")
    a.legend(fontsize=6)
    b.set_xlabel("concurrent streams")
    b.set_ylabel("requests/s")
    b.legend(fontsize=6)
    fig.suptitle(f"Plain traffic, closed loop: {result['engines']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_plain_cli(args: argparse.Namespace, out: Path) -> int:
    conc = [int(x) for x in str(args.plain_concurrency).split(",") if x.strip()]
    run_plain(out, conc, args.requests, args.engines, args.profile)
    return 0
