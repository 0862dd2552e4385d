"""The simulated engine over HTTP: SGLang field names, prefix cache, batching, priority."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from analysis.tokenizer import get_tokenizer
from backends.sim.app import SimThread, start_sim_thread
from backends.sim.cli import main
from backends.sim.config import SimConfig
from backends.sim.textgen import eos_token_id, generate


@pytest.fixture(scope="module")
def fast() -> Iterator[SimThread]:
    with start_sim_thread(SimConfig(time_scale=0.01)) as t:
        yield t


def test_openai_sdk_chat_and_completions(fast: SimThread):
    client = openai.OpenAI(base_url=fast.url + "/v1", api_key="unused")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="sim-llama-3-8b", messages=msgs, max_tokens=7)
    assert r.object == "chat.completion" and r.usage.completion_tokens == 7
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.strip()
    again = client.chat.completions.create(model="x", messages=msgs, max_tokens=7)
    assert again.choices[0].message.content == r.choices[0].message.content  # deterministic
    assert again.usage.prompt_tokens_details.cached_tokens > 0

    chunks = list(client.chat.completions.create(
        model="x", messages=msgs, max_tokens=7, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    c = client.completions.create(model="x", prompt="Once upon", max_tokens=5, n=2)
    assert len(c.choices) == 2 and c.usage.completion_tokens == 10
    assert c.choices[0].text != c.choices[1].text
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model="x", prompt="Once upon", max_tokens=5, stream=True) if ch.choices)
    assert streamed == c.choices[0].text


def test_stop_strings_and_max_completion_tokens(fast: SimThread):
    tok = get_tokenizer()
    full = generate(tok, tok.encode("abc"), 40, 0)
    word = full.pieces[10]  # a word that surely appears
    r = httpx.post(fast.url + "/v1/completions", json={
        "prompt": "abc", "max_completion_tokens": 40, "stop": [word], "ignore_eos": True,
        "no_stop_trim": False, "skip_special_tokens": True, "separate_reasoning": True})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == word
    assert word not in choice["text"] and full.text.startswith(choice["text"])
    assert r.json()["usage"]["completion_tokens"] <= 11


def test_generate_fields_match_sglang(fast: SimThread):
    body = {"text": "The capital of France is", "rid": "gen-1", "priority": 3,
            "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}
    r = httpx.post(fast.url + "/generate", json=body).json()
    assert set(r) >= {"text", "output_ids", "meta_info"}
    m = r["meta_info"]
    assert m["id"] == "gen-1" and m["completion_tokens"] == 6 and len(r["output_ids"]) == 6
    assert m["finish_reason"] == {"type": "length", "length": 6}
    assert {"prompt_tokens", "cached_tokens", "e2e_latency"} <= set(m)
    ids = httpx.post(fast.url + "/generate", json={
        "input_ids": get_tokenizer().encode("The capital of France is"),
        "sampling_params": {"max_new_tokens": 6, "temperature": 0}}).json()
    assert ids["text"] == r["text"] and ids["meta_info"]["cached_tokens"] > 0
    lines = []
    with httpx.stream("POST", fast.url + "/generate",
                      json={**body, "rid": "gen-2", "stream": True}) as s:
        lines = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][5:])
    assert last["text"] == r["text"] and last["meta_info"]["finish_reason"]["type"] == "length"


@pytest.fixture(scope="module")
def short_eos() -> Iterator[SimThread]:
    """An engine whose outputs end by themselves (EOS) after 4..12 tokens."""
    with start_sim_thread(SimConfig(time_scale=0.01, eos_after=(4, 12))) as t:
        yield t


def _sse(client: httpx.Client, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_request_fields_change_the_output_and_unknown_fields_do_not(short_eos: SimThread):
    c = httpx.Client(base_url=short_eos.url, timeout=30)
    msgs = [{"role": "user", "content": "Name three birds."}]

    def chat(**fields) -> dict:
        r = c.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 30, **fields})
        assert r.status_code == 200, r.text
        return r.json()

    full = chat(ignore_eos=True)
    free = chat()
    assert full["usage"]["completion_tokens"] == 30 and full["choices"][0]["finish_reason"] == "length"
    n = free["usage"]["completion_tokens"]
    assert 4 <= n <= 12 and free["choices"][0]["finish_reason"] == "stop"
    assert free["choices"][0]["matched_stop"] == eos_token_id(get_tokenizer())
    assert full["choices"][0]["message"]["content"].startswith(free["choices"][0]["message"]["content"])
    # Unknown fields change nothing; seed and temperature do what the API says.
    assert chat(ignore_eos=True, some_unknown_field={"x": 1}, another=[2])["choices"] == full["choices"]
    s1, s2 = chat(seed=1, ignore_eos=True), chat(seed=2, ignore_eos=True)
    assert s1["choices"] != s2["choices"] and chat(seed=1, ignore_eos=True)["choices"] == s1["choices"]
    g1, g2 = chat(seed=1, temperature=0, ignore_eos=True), chat(seed=2, temperature=0, ignore_eos=True)
    assert g1["choices"] == g2["choices"] != s1["choices"]
    word = full["choices"][0]["message"]["content"].split()[5]
    cut = chat(ignore_eos=True, stop=[" " + word])["choices"][0]
    text = full["choices"][0]["message"]["content"]
    assert cut["finish_reason"] == "stop" and cut["matched_stop"] == " " + word
    assert cut["message"]["content"] == text[: text.index(" " + word)]

    # Log-probabilities only when asked for; the stream carries the same ones.
    assert full["choices"][0]["logprobs"] is None
    lp = chat(ignore_eos=True, logprobs=True, top_logprobs=2)["choices"][0]["logprobs"]["content"]
    assert len(lp) == 30 and all(len(e["top_logprobs"]) == 2 for e in lp)
    assert "".join(e["token"] for e in lp) == text and lp[0]["top_logprobs"][0]["token"] == lp[0]["token"]
    chunks = _sse(c, "/v1/chat/completions", {"messages": msgs, "max_tokens": 30, "ignore_eos": True,
                                             "logprobs": True, "top_logprobs": 2})
    streamed = [e for ch in chunks for choice in ch["choices"]
                for e in ((choice.get("logprobs") or {}).get("content") or [])]
    assert streamed == lp
    bad = c.post("/v1/chat/completions", json={"messages": msgs, "top_logprobs": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"

    comp = c.post("/v1/completions", json={"prompt": "Birds:", "max_tokens": 8, "ignore_eos": True,
                                           "logprobs": 1}).json()["choices"][0]
    clp = comp["logprobs"]
    assert "".join(clp["tokens"]) == comp["text"] and len(clp["token_logprobs"]) == 8
    assert clp["text_offset"][0] == 0 and all(len(d) == 1 for d in clp["top_logprobs"])
    gen = c.post("/generate", json={"text": "Birds:", "return_logprob": True, "top_logprobs_num": 2,
                                    "sampling_params": {"max_new_tokens": 40}}).json()
    m = gen["meta_info"]
    assert m["finish_reason"]["type"] == "stop" and 4 <= m["completion_tokens"] <= 12
    assert [t[1] for t in m["output_token_logprobs"]] == gen["output_ids"]
    assert all(len(top) == 2 for top in m["output_top_logprobs"])
    plain = c.post("/generate", json={"text": "Birds:", "sampling_params": {
        "max_new_tokens": 40, "ignore_eos": True}}).json()
    assert plain["meta_info"]["completion_tokens"] == 40 and "output_token_logprobs" not in plain["meta_info"]
    assert plain["text"].startswith(gen["text"])


def test_info_load_metrics_flush_and_errors(fast: SimThread):
    c = httpx.Client(base_url=fast.url)
    assert c.get("/health").status_code == 200
    assert c.get("/health_generate").status_code == 200
    for path in ("/get_server_info", "/server_info"):
        info = c.get(path).json()
        assert info["max_total_num_tokens"] > 300_000 and info["max_running_requests"] > 0
        assert info["simulated"] is True
        assert (Path(info["model_path"]) / "tokenizer.json").is_file()
        assert (Path(info["model_path"]) / "tokenizer_config.json").is_file()
    mi = c.get("/model_info").json()
    assert mi == c.get("/get_model_info").json()
    assert c.get("/v1/models").json()["data"][0]["id"] == "sim-llama-3-8b"
    load = c.get("/get_load").json()[0]
    assert {"num_reqs", "num_waiting_reqs", "num_tokens"} <= set(load)
    assert c.get("/v1/loads").json()["loads"][0]["num_reqs"] == 0
    assert c.post("/flush_cache").status_code == 200 and c.get("/flush_cache").status_code == 200
    metrics = c.get("/metrics").text
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:cache_hit_rate",
                 "sglang:generation_tokens_total"):
        assert name in metrics
    for path, body in [("/v1/chat/completions", {"messages": []}),
                       ("/v1/completions", {"prompt": "x", "max_tokens": -1}),
                       ("/generate", {"sampling_params": {}}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                 "stop": 5})]:
        r = c.post(path, json=body)
        assert r.status_code == 400
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_shared_prefix_is_cached_and_ttft_shrinks():
    system = " ".join(f"rule{i}" for i in range(1000))  # ~2,000 tokens
    with start_sim_thread(SimConfig(time_scale=1.0)) as t:
        def ask(q: str) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = httpx.post(t.url + "/v1/chat/completions", json={
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": q}], "max_tokens": 1})
            return time.perf_counter() - t0, r.json()

        t_first, first = ask("first question")
        t_second, second = ask("another one")
    assert first["usage"]["prompt_tokens"] >= 2000
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] < 100
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1900
    # ~65 ms of prefill against ~6 ms: well clear of HTTP noise.
    assert t_second < t_first - 0.03, (t_first, t_second)


async def _gen(client: httpx.AsyncClient, i: int, max_new: int, priority: int = 0) -> float:
    r = await client.post("/generate", json={
        "text": f"request number {i} " * 20, "priority": priority,
        "sampling_params": {"max_new_tokens": max_new}})
    r.raise_for_status()
    return time.perf_counter()


async def test_throughput_grows_to_the_batch_limit_then_latency_grows():
    with start_sim_thread(SimConfig(time_scale=0.5, max_running_requests=8)) as t:
        async with httpx.AsyncClient(base_url=t.url, timeout=30) as client:
            async def wave(n: int) -> tuple[float, float]:
                t0 = time.perf_counter()
                ends = await asyncio.gather(*(_gen(client, i, 24) for i in range(n)))
                return n / (max(ends) - t0), sum(e - t0 for e in ends) / n

            thr1, lat1 = await wave(1)
            thr8, lat8 = await wave(8)
            thr24, lat24 = await wave(24)
    assert thr8 > 3 * thr1, (thr1, thr8)
    assert thr24 < 1.5 * thr8, (thr8, thr24)
    assert lat24 > 1.5 * lat8, (lat8, lat24)


async def test_high_priority_overtakes_queued_low_priority():
    with start_sim_thread(SimConfig(time_scale=0.2, max_running_requests=2)) as t:
        async with httpx.AsyncClient(base_url=t.url, timeout=30) as client:
            busy = [asyncio.ensure_future(_gen(client, i, 40)) for i in range(2)]
            await asyncio.sleep(0.02)
            low = [asyncio.ensure_future(_gen(client, 10 + i, 10)) for i in range(4)]
            await asyncio.sleep(0.02)
            high = asyncio.ensure_future(_gen(client, 99, 10, priority=100))
            await asyncio.gather(*busy, *low, high)
    assert high.result() < min(f.result() for f in low)


async def test_client_disconnect_aborts_the_request():
    with start_sim_thread(SimConfig(time_scale=1.0)) as t:
        async with httpx.AsyncClient(base_url=t.url, timeout=30) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/generate", json={
                    "text": "long", "sampling_params": {"max_new_tokens": 5000}}, timeout=0.2)
            for _ in range(50):
                if not t.sim.engine.running:
                    break
                await asyncio.sleep(0.02)
            assert not t.sim.engine.running and t.sim.engine.stats.aborted == 1


def test_main_rejects_bad_args():
    with pytest.raises(SystemExit):
        main(["--profile", "nope"])
    assert main(["--time-scale", "-1"]) == 2
    for bad in ("5", "9,4", "0,3", "a,b"):
        with pytest.raises(SystemExit):
            main(["--eos-after", bad])
