"""The intake gate: background submits (async, throughput) take turns through the
handler; a latency-critical request never waits behind them."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.intake import IntakeGate, IntakeSlots, is_background_submit


def _scope(method: str = "POST", **headers: str) -> Scope:
    return {"type": "http", "method": method,
            "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def test_what_counts_as_a_background_submit() -> None:
    assert is_background_submit(_scope(x_parrot_async="1", x_parrot_criteria="throughput"))
    assert is_background_submit(_scope(x_parrot_async="TRUE", x_parrot_criteria=" Throughput "))
    assert not is_background_submit(_scope(x_parrot_async="1"))  # criteria defaults to latency
    assert not is_background_submit(_scope(x_parrot_async="1", x_parrot_criteria="latency"))
    assert not is_background_submit(_scope(x_parrot_criteria="throughput"))  # synchronous
    assert not is_background_submit(_scope("GET", x_parrot_async="1", x_parrot_criteria="throughput"))


async def _slow_handler(scope: Scope, receive: Receive, send: Send) -> None:
    """A handler that takes 50 ms, awaiting (as registering in Redis does)."""
    await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.timeout(30)
def test_background_submits_take_turns_and_a_chat_passes_them() -> None:
    async def go() -> tuple[float, float]:
        gate = IntakeGate(_slow_handler, IntakeSlots(2))
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            bg = {"X-Parrot-Async": "1", "X-Parrot-Criteria": "throughput"}
            t0 = time.perf_counter()
            burst = [asyncio.create_task(client.post("/v1/chat/completions", headers=bg))
                     for _ in range(8)]
            await asyncio.sleep(0.005)
            chat = await client.post("/v1/chat/completions", headers={"X-Parrot-Criteria": "latency"})
            chat_s = time.perf_counter() - t0
            assert chat.status_code == 200
            assert all(r.status_code == 200 for r in await asyncio.gather(*burst))
            return chat_s, time.perf_counter() - t0

    chat_s, burst_s = asyncio.run(go())
    assert chat_s < 0.1  # straight in: one handler's 50 ms
    assert burst_s >= 0.19  # 8 submits two at a time: four turns of 50 ms


@pytest.mark.timeout(30)
def test_no_slots_means_no_gate() -> None:
    async def go() -> float:
        transport = httpx.ASGITransport(app=IntakeGate(_slow_handler, IntakeSlots(0)))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            bg = {"X-Parrot-Async": "1", "X-Parrot-Criteria": "throughput"}
            t0 = time.perf_counter()
            await asyncio.gather(*(client.post("/", headers=bg) for _ in range(8)))
            return time.perf_counter() - t0

    assert asyncio.run(go()) < 0.15


@pytest.mark.timeout(120)
def test_a_throughput_dag_through_one_slot_completes(redis_url: str) -> None:
    """One slot, a DAG of throughput requests submitted at once from many threads
    (consumers before producers, so consumers wait for inputs while producers need the
    slot) and a latency-critical request beside them: nothing deadlocks, all finish."""
    import concurrent.futures

    import openai

    from gateway.embedded import start_sim_engines
    from gateway.testing import start_gateway

    sims = start_sim_engines(2, profile="h100-llama3-8b", time_scale=0.02)
    gw = start_gateway(redis_url, sims.urls, intake_slots=1)
    try:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)

        def submit(content: str, output: str | None, criteria: str, is_async: bool) -> object:
            h = {"X-Parrot-Session": "gated", "X-Parrot-Criteria": criteria}
            if output:
                h["X-Parrot-Output"] = output
            if is_async:
                h["X-Parrot-Async"] = "1"
            return c.chat.completions.create(
                model="", messages=[{"role": "user", "content": content}], max_tokens=4,
                extra_headers=h, extra_body={"ignore_eos": True})

        jobs = [("Reduce " + " ".join("{{m%d}}" % i for i in range(12)), "final")]
        jobs += [(f"Map {i} of {{{{c{i}}}}}", f"m{i}") for i in range(12)]
        jobs += [(f"Chunk {i}", f"c{i}") for i in range(12)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futs = [pool.submit(submit, text, out, "throughput", True) for text, out in jobs]
            chat = pool.submit(submit, "Hello", None, "latency", False)
            for f in futs:
                f.result()
            assert chat.result(timeout=60).choices[0].message.content  # type: ignore[attr-defined]
        r = httpx.get(f"{gw.url}/v1/sessions/gated/variables/final", params={"wait": 60}, timeout=70)
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    finally:
        gw.stop()
        sims.stop()
