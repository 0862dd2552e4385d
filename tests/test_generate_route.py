"""SGLang-native ``/generate`` through the gateway: an SGLang frontend program's HTTP calls
(what ``sgl.RuntimeEndpoint`` sends for a fork/join), replayed with httpx since sglang
itself cannot be installed here; scheduled with prefix affinity, authenticated, counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from analysis.tokenizer import get_tokenizer
from gateway.redis_server import RedisServer
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

KEY = "sk-generate-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PREFIX = ("You are a careful analyst of bird migration. " * 40
          + "Report: the arctic tern flies from pole to pole every year.")


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = Path(tmp_path_factory.mktemp("keys")) / "keys.yaml"
    keys.write_text(f"keys:\n  {KEY}: {{tenant: lab}}\n")
    s = start_stack(redis_server.url, engines=2, time_scale=0.01, api_keys=str(keys))
    yield s
    s.stop()


def sampling(**kw: Any) -> dict[str, Any]:
    """``RuntimeEndpoint.generate``'s sampling_params (``SglSamplingParams.to_srt_kwargs``)."""
    return {"skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 16,
            "stop": [], "stop_token_ids": None, "temperature": 0.0, "top_p": 1.0, "top_k": -1,
            "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": True,
            "regex": None, "json_schema": None, **kw}


async def gen(c: httpx.AsyncClient, text: str, stream: bool = False, **kw: Any) -> dict[str, Any]:
    body = {"text": text, "sampling_params": sampling(**kw)}
    if not stream:
        r = await c.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]
    last: dict[str, Any] = {}
    pos, pieces = 0, []
    async with c.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():  # RuntimeEndpoint.generate_stream's loop
            if not line.startswith("data:"):
                continue
            if line == "data: [DONE]":
                break
            last = json.loads(line[5:].strip("\n"))
            pieces.append(last["text"][pos:])
            pos += len(pieces[-1])
    assert "".join(pieces) == last["text"]
    return last


def test_fork_join_program_over_generate(stack: Stack) -> None:
    """Like ``s += PREFIX; forks = s.fork(4); forks[i] += gen(...); s += join(forks)``."""
    prefix_tokens = len(get_tokenizer().encode(PREFIX))

    async def program() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=30) as c:
            info = (await c.get("/get_model_info")).json()  # RuntimeEndpoint.__init__
            assert info["model_path"] and info["is_generation"] is True
            # fork(): commit the shared prefix first (max_new_tokens=0 caches it).
            commit = await gen(c, PREFIX, max_new_tokens=0)
            assert commit["meta_info"]["completion_tokens"] == 0 and commit["text"] == ""
            forks = await asyncio.gather(*(
                gen(c, PREFIX + f"\nAspect {i}:", stream=i % 2 == 1) for i in range(4)))
            joined = PREFIX + "".join(f"\nAspect {i}:{f['text']}" for i, f in enumerate(forks))
            join = await gen(c, joined + "\nSummary:", max_new_tokens=24)
            return commit, forks, join

    commit, forks, join = asyncio.run(program())
    assert all(f["meta_info"]["finish_reason"]["type"] == "length" for f in forks)
    assert all(f["meta_info"]["completion_tokens"] == 16 for f in forks)
    assert len({f["text"] for f in forks}) == 4  # different continuations
    # Prefix affinity: every fork and the join ran where the prefix was cached.
    for r in [*forks, join]:
        assert r["meta_info"]["cached_tokens"] >= prefix_tokens - 8, r["meta_info"]
    # Greedy: the streamed fork says what the same request unstreamed says.
    async def again() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=30) as c:
            return await gen(c, PREFIX + "\nAspect 1:")
    assert asyncio.run(again())["text"] == forks[1]["text"]
    text = httpx.get(stack.url + "/metrics").text
    assert 'route="/generate"' in text


def test_input_ids_logprobs_and_json_schema(stack: Stack) -> None:
    c = httpx.Client(base_url=stack.url, headers=AUTH, timeout=30)
    ids = get_tokenizer().encode("The capital of France is")
    r = c.post("/generate", json={"input_ids": ids, "return_logprob": True, "top_logprobs_num": 2,
                                  "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}}).json()
    assert len(r["output_ids"]) == 5 and r["meta_info"]["prompt_tokens"] == len(ids)
    assert [t[1] for t in r["meta_info"]["output_token_logprobs"]] == r["output_ids"]
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    out = c.post("/generate", json={"text": "Capital as JSON:", "sampling_params": {
        "max_new_tokens": 64, "json_schema": json.dumps(schema)}}).json()
    assert set(json.loads(out["text"])) == {"city"}


@pytest.mark.parametrize("body,status,param", [
    ({"text": ["a", "b"]}, 400, "text"),
    ({"text": "a", "input_ids": [1]}, 400, "text"),
    ({}, 400, "text"),
    ({"text": "a", "sampling_params": {"n": 2}}, 400, "sampling_params.n"),
    ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, 400, "sampling_params.max_new_tokens"),
    ({"text": "a", "model": "nope"}, 404, "model"),
])
def test_bad_generate_requests(stack: Stack, body: dict[str, Any], status: int, param: str) -> None:
    r = httpx.post(stack.url + "/generate", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_generate_needs_a_key(stack: Stack) -> None:
    r = httpx.post(stack.url + "/generate", json={"text": "hi"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
