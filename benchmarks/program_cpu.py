"""Gateway CPU that program inference adds per plain request.

    python -m benchmarks.program_cpu --conversations 32 --turns 8 --rounds 3

Two gateway processes (``infer_programs`` on and off) in front of the same
simulated engines and Redis; multi-turn chats (a shared ~1 KB system prompt,
each turn re-sending the transcript, as an unmodified client does) are sent to
one, then the other, alternating for ``--rounds``. Reported: each gateway's CPU
seconds (user + system, psutil) per request over the runs, the difference, and
Redis's CPU per request while the inferring gateway ran. The engines run fast
(time-scale 0.01), so the run measures the proxy, not the engines. On a shared
machine the figures are indicative: compare them with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from .harness import run_async
from .httpclient import HttpClient
from .services import Services

SYSTEM = "You are a helpful assistant who answers briefly and precisely. " * 16


async def _conversation(http: HttpClient, url: str, model: str, i: int, turns: int) -> int:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Conversation {i}, question {t}: why is that so?"})
        body = orjson.dumps({"model": model, "messages": messages, "max_tokens": 8, "temperature": 0})
        r = await http.request("POST", url + "/v1/chat/completions", body,
                               {"Content-Type": "application/json"})
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.body[:200]!r}")
        answer = orjson.loads(r.body)["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})
    return turns


async def _run(url: str, model: str, conversations: int, turns: int, offset: int) -> int:
    async with HttpClient() as http:
        done = await asyncio.gather(*(_conversation(http, url, model, offset + i, turns)
                                      for i in range(conversations)))
    return sum(done)


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def measure(conversations: int = 32, turns: int = 8, rounds: int = 3,
            out: Path | None = None) -> dict[str, Any]:
    log_dir = out or Path("/tmp/parrot-program-cpu")
    with Services(log_dir) as svc:
        svc.start_engines(2, "h100-llama3-8b", 0.01)
        on_url = svc.start_gateway()
        off_url = svc.start_gateway(name="gateway-noinfer", env={"PARROT_INFER_PROGRAMS": "false"})
        on_pid, off_pid = svc.pids()["gateway"], svc.pids()["gateway-noinfer"]
        assert svc.redis is not None and svc.redis.proc is not None
        redis_pid = svc.redis.proc.pid
        time.sleep(1.0)
        cpu = {"on": 0.0, "off": 0.0, "redis_on": 0.0}
        reqs = {"on": 0, "off": 0}
        for r in range(rounds):
            for mode, url, pid in (("off", off_url, off_pid), ("on", on_url, on_pid)):
                c0, r0 = _cpu(pid), _cpu(redis_pid)
                reqs[mode] += run_async(_run(url, svc.model, conversations, turns, 10_000 * r))
                time.sleep(0.3)  # let write-behind finish
                cpu[mode] += _cpu(pid) - c0
                if mode == "on":
                    cpu["redis_on"] += _cpu(redis_pid) - r0
    per = {"on": cpu["on"] / reqs["on"] * 1000, "off": cpu["off"] / reqs["off"] * 1000,
           "redis_on": cpu["redis_on"] / reqs["on"] * 1000}
    return {
        "requests_per_mode": reqs["on"],
        "gateway_cpu_ms_per_request_inference_on": round(per["on"], 4),
        "gateway_cpu_ms_per_request_inference_off": round(per["off"], 4),
        "added_gateway_cpu_ms_per_request": round(per["on"] - per["off"], 4),
        "redis_cpu_ms_per_request_inference_on": round(per["redis_on"], 4),
        "conversations": conversations, "turns": turns, "rounds": rounds, "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.program_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conversations", type=int, default=32)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.conversations, args.turns, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
