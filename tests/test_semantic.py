"""Semantic variables end to end: real gateway(s), real redis-server, simulated engines."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import openai
import pytest

from gateway.testing import Stack, start_gateway, start_stack

pytestmark = pytest.mark.timeout(120)


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def submit(c: openai.OpenAI, session: str, content: str, output: str | None = None,
           is_async: bool = True, max_tokens: int = 8, **headers: str) -> Any:
    h = {"X-Parrot-Session": session, **headers}
    if output:
        h["X-Parrot-Output"] = output
    if is_async:
        h["X-Parrot-Async"] = "1"
    return c.chat.completions.create(
        model="", messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        extra_headers=h, extra_body={"ignore_eos": True},
    )


def wait_var(url: str, session: str, name: str, wait: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(f"{url}/v1/sessions/{session}/variables/{name}", params={"wait": wait},
                      timeout=wait + 10)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body


def test_async_chain_reverse_order_matches_sequential(stack: Stack) -> None:
    c = sdk(stack.url)
    steps = 5
    # Submit the whole chain in reverse order: step k consumes s{k-1}.
    for k in reversed(range(steps)):
        content = "Start the story." if k == 0 else "Continue: {{s%d}}" % (k - 1)
        r = submit(c, "chain1", content, output=f"s{k}")
        parrot = r.model_extra["parrot"]
        assert parrot["status"] == "pending" and parrot["output"] == f"s{k}"
        assert r.choices[0].finish_reason is None and r.choices[0].message.content == ""
    final = wait_var(stack.url, "chain1", f"s{steps - 1}")
    assert final["status"] == "ready", final
    # The same chain run step by step on the client gives the same text.
    text = ""
    for k in range(steps):
        content = "Start the story." if k == 0 else f"Continue: {text}"
        r = c.chat.completions.create(model="", messages=[{"role": "user", "content": content}],
                                      max_tokens=8, extra_body={"ignore_eos": True})
        text = r.choices[0].message.content or ""
    assert final["value"] == text


def test_map_reduce_runs_with_deduced_objective_and_one_task_group(stack: Stack) -> None:
    """What the scheduler was given when each request ran, as recorded at run time: the
    throughput maps feed a latency-critical reduce, so they ran latency-critical, as one
    task group; the reduce became ready only after the last map finished."""
    c = sdk(stack.url)
    refs = " ".join("{{m%d}}" % i for i in range(16))
    submit(c, "mr1", "Summarize all: " + refs, output="final", max_tokens=6)
    # Every map waits for `doc`, so all are registered before any is analysed and run.
    for i in range(16):
        submit(c, "mr1", f"Summarize chunk {i} of {{{{doc}}}}: " + "lorem ipsum " * 40,
               output=f"m{i}", max_tokens=6, **{"X-Parrot-Criteria": "throughput"})
    assert httpx.put(f"{stack.url}/v1/sessions/mr1/variables/doc",
                     json={"value": "the report"}).status_code == 200
    assert wait_var(stack.url, "mr1", "final")["status"] == "ready"
    graph = httpx.get(f"{stack.url}/v1/sessions/mr1").json()
    reqs = {r["output"]: r for r in graph["requests"]}
    maps = [reqs[f"m{i}"] for i in range(16)]
    final = reqs["final"]
    assert len(graph["edges"]) == 16  # each map -> final (doc has no producer)
    assert all(m["status"] == "done" for m in maps) and final["status"] == "done"
    # Run-time objective: asked for throughput, ran latency-critical (deduced backwards).
    assert all(m["criteria"] == "throughput" for m in maps)
    assert [m["criteria_effective"] for m in maps] == ["latency"] * 16
    assert final["criteria_effective"] == "latency" and final["group_effective"] is None
    # Run-time task group: the 16 maps ran as one group, the one the full graph names.
    groups = {m["group_effective"] for m in maps}
    assert len(groups) == 1 and None not in groups
    assert groups == {m["group"] for m in maps}
    # Timestamps: every map started before the reduce was ready, which was after the
    # last map finished; the reduce ran after that.
    last_map = max(m["finished_at"] for m in maps)
    assert max(m["started_at"] for m in maps) <= last_map <= final["ready_at"]
    assert final["ready_at"] <= final["started_at"] <= final["finished_at"]
    assert all(m["ready_at"] <= m["started_at"] <= m["finished_at"] for m in maps)


def test_put_get_conflicts_and_errors(stack: Stack) -> None:
    u = stack.url
    r = httpx.put(f"{u}/v1/sessions/s2/variables/x", json={"value": "hello"})
    assert r.status_code == 200 and r.json()["status"] == "ready"
    again = httpx.put(f"{u}/v1/sessions/s2/variables/x", json={"value": "other"})
    assert again.status_code == 409 and again.json()["error"]["code"]
    assert httpx.get(f"{u}/v1/sessions/s2/variables/x").json()["value"] == "hello"
    assert httpx.get(f"{u}/v1/sessions/nope/variables/x").status_code == 404
    assert httpx.get(f"{u}/v1/sessions/nope").status_code == 404
    big = httpx.put(f"{u}/v1/sessions/s2/variables/big", json={"value": "x" * (1 << 20 + 1)})
    assert big.status_code == 413
    bad = httpx.put(f"{u}/v1/sessions/s2/variables/y", json={"nope": 1})
    assert bad.status_code == 400
    # Cycle: a consumes b and produces a... via two requests.
    c = sdk(u)
    submit(c, "s3", "use {{b}}", output="a")
    with pytest.raises(openai.BadRequestError) as ei:
        submit(c, "s3", "use {{a}}", output="b")
    assert ei.value.body["code"] == "dependency_cycle"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        submit(c, "s3", "self {{z}}", output="z")
    # A second producer of the same variable.
    with pytest.raises(openai.ConflictError):
        submit(c, "s3", "again {{b}}", output="a")


def test_sync_request_waits_for_inputs_and_streams(stack: Stack) -> None:
    u = stack.url
    c = sdk(u)

    def consume() -> str:
        chunks = c.chat.completions.create(
            model="", messages=[{"role": "user", "content": "Echo {{question}}"}], max_tokens=5,
            stream=True, extra_headers={"X-Parrot-Session": "s4", "X-Parrot-Output": "answer"},
        )
        return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(consume)
        time.sleep(0.5)
        assert not fut.done()  # held server-side until the input exists
        httpx.put(f"{u}/v1/sessions/s4/variables/question", json={"value": "why?"})
        streamed = fut.result(timeout=30)
    assert streamed
    assert wait_var(u, "s4", "answer")["value"] == streamed


def test_delete_session_fails_pending(stack: Stack) -> None:
    u = stack.url
    c = sdk(u)
    submit(c, "s5", "needs {{never}}", output="out")
    assert httpx.delete(f"{u}/v1/sessions/s5").status_code == 200
    assert httpx.get(f"{u}/v1/sessions/s5").status_code == 404


def test_deadline_fails_consumers(stack: Stack) -> None:
    """The first request's X-Parrot-Timeout sets the session deadline; it bounds every
    later request of the session too (b asked for nothing: the default 600 s)."""
    c = sdk(stack.url)
    t0 = time.monotonic()
    submit(c, "s6", "needs {{never}}", output="a", **{"X-Parrot-Timeout": "1"})
    submit(c, "s6", "then {{a}}", output="b")
    a = wait_var(stack.url, "s6", "a", wait=10)
    b = wait_var(stack.url, "s6", "b", wait=10)
    assert time.monotonic() - t0 < 5
    assert a["status"] == "failed" and "deadline" in a["error"]
    # b ends with the session too, and says why: its input a failed
    assert b["status"] == "failed" and "upstream_failed" in b["error"] and "'a'" in b["error"]


@pytest.mark.parametrize("forward", [True, False], ids=["relayed-to-owner", "across-replicas"])
def test_two_replicas_share_redis(redis_url: str, forward: bool) -> None:
    """A session's requests sent to both replicas: relayed to the session's owner, or
    (forwarding off, as while an owner cannot be reached) run where they land, the
    consumer learning of its input from the other replica through Redis."""
    s = start_stack(redis_url, engines=1, time_scale=0.02, replicas=2, forward_sessions=forward)
    try:
        g1, g2 = s.gateway, s.extra_gateways[0]
        assert g1 is not None
        c1, c2 = sdk(g1.url), sdk(g2.url)
        submit(c2, "rep", "Consume {{x}}", output="y")     # consumer on replica 2 first
        submit(c1, "rep", "Produce something", output="x")  # producer on replica 1
        y = wait_var(g1.url, "rep", "y")
        assert y["status"] == "ready" and y["value"]
        x = wait_var(g2.url, "rep", "x")
        assert x["status"] == "ready"
    finally:
        s.stop()


def test_producer_failure_fails_transitive_consumers(redis_url: str) -> None:
    from gateway.embedded import start_sim_engines

    sims = start_sim_engines(1, profile="h100-llama3-8b", time_scale=0.5)
    # No waiting for an engine to come back: the producer fails at once.
    gw = start_gateway(redis_url, sims.urls, health_interval_s=0.2, retry_budget=0,
                       engine_wait_s=0)
    try:
        c = sdk(gw.url)
        submit(c, "f1", "Write a long essay", output="a", max_tokens=500)
        submit(c, "f1", "Use {{a}}", output="b")
        submit(c, "f1", "Use {{b}}", output="c")
        time.sleep(0.7)
        sims.procs[0].kill()
        t0 = time.monotonic()
        states = {n: wait_var(gw.url, "f1", n, wait=20) for n in ("a", "b", "c")}
        assert time.monotonic() - t0 < 30
        assert states["a"]["status"] == "failed"
        for n, up in (("b", "a"), ("c", "b")):
            assert states[n]["status"] == "failed"
            assert states[n]["error"].startswith("upstream_failed") and f"'{up}'" in states[n]["error"]
    finally:
        gw.stop()
        sims.stop()


def test_graph_reports_prefix_groups_and_critical_path(stack: Stack) -> None:
    c = sdk(stack.url)
    system = "You are the release-notes writer of a large project. " * 60  # ~600 tokens
    h = {"X-Parrot-Session": "pg1", "X-Parrot-Async": "1"}
    for i in range(3):
        c.chat.completions.create(
            model="", max_tokens=4, messages=[{"role": "system", "content": system},
                                              {"role": "user", "content": f"note {i}"}],
            extra_headers={**h, "X-Parrot-Output": f"n{i}"},
        )
    submit(c, "pg1", "Merge {{n0}} {{n1}} {{n2}}", output="all")
    assert wait_var(stack.url, "pg1", "all")["status"] == "ready"
    graph = httpx.get(f"{stack.url}/v1/sessions/pg1").json()
    by_output = {r["output"]: r["id"] for r in graph["requests"]}
    groups = graph["prefix_groups"]
    assert len(groups) == 1
    assert set(groups[0]["requests"]) == {by_output[f"n{i}"] for i in range(3)}
    assert groups[0]["shared_tokens"] >= 512
    assert graph["critical_path"][-1] == by_output["all"] and graph["critical_path_s"] > 0
