"""The intake gate: background submits (async, throughput) take turns through the
handler; a latency-critical request never waits behind them."""

from __future__ import annotations

import asyncio

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


class _Recorder:
    """A handler that takes 50 ms, awaiting (as registering in Redis does), and logs who
    was inside it when: the checks read the order, not the wall clock (a stalled CI core
    would stretch any time bound)."""

    def __init__(self) -> None:
        self.inside: set[str] = set()
        self.most_inside = 0
        self.started: list[str] = []
        self.finished: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        who = dict(scope["headers"]).get(b"x-who", b"?").decode()
        self.started.append(who)
        self.inside.add(who)
        self.most_inside = max(self.most_inside, len(self.inside))
        await asyncio.sleep(0.05)
        self.inside.discard(who)
        self.finished.append(who)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _burst(app: IntakeGate, n: int, chat: bool) -> None:
    """``n`` background submits at once, then (a moment later) a latency-critical chat."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        bg = {"X-Parrot-Async": "1", "X-Parrot-Criteria": "throughput"}
        burst = [asyncio.create_task(client.post("/v1/chat/completions", headers={**bg, "X-Who": f"bg{i}"}))
                 for i in range(n)]
        if chat:
            while not app.app.started:  # type: ignore[attr-defined]
                await asyncio.sleep(0.001)
            r = await client.post("/v1/chat/completions",
                                  headers={"X-Parrot-Criteria": "latency", "X-Who": "chat"})
            assert r.status_code == 200
        assert all(r.status_code == 200 for r in await asyncio.gather(*burst))


@pytest.mark.timeout(30)
def test_background_submits_take_turns_and_a_chat_passes_them() -> None:
    handler = _Recorder()
    asyncio.run(_burst(IntakeGate(handler, IntakeSlots(2)), 8, chat=True))
    # 8 submits two at a time; the chat went straight in beside them, not after them
    assert handler.most_inside == 3
    assert handler.finished.index("chat") < 4
    assert sum(w.startswith("bg") for w in handler.started[:handler.started.index("chat")]) <= 4


@pytest.mark.timeout(30)
def test_no_slots_means_no_gate() -> None:
    handler = _Recorder()
    asyncio.run(_burst(IntakeGate(handler, IntakeSlots(0)), 8, chat=False))
    assert handler.most_inside == 8


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
