"""Simulated engines work unchanged behind SGLang Model Gateway (``smg``, cache_aware)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from backends.sim.app import SimThread, start_sim_thread
from backends.sim.config import SimConfig
from common.serving import free_port

SMG = shutil.which("smg")
pytestmark = pytest.mark.skipif(SMG is None, reason="smg (sglang-router) is not installed")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[SimThread]]]:
    engines = [start_sim_thread(SimConfig(time_scale=0.02)) for _ in range(2)]
    tokdir = engines[0].sim.model_path
    port = free_port("127.0.0.1")
    log = tmp_path_factory.mktemp("smg") / "smg.log"
    cmd = [SMG, "launch", "--host", "127.0.0.1", "--port", str(port),
           "--worker-urls", *(e.url for e in engines), "--policy", "cache_aware",
           "--tokenizer-path", tokdir, "--log-level", "warn",
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port("127.0.0.1"))]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:  # ready = both workers registered and a model listed
            try:
                if httpx.get(url + "/v1/models", timeout=1).json().get("data"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("smg did not come up:\n" + Path(log).read_text()[-3000:])
            time.sleep(0.2)
        yield url, engines
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for e in engines:
            e.stop()


def test_chat_streaming_and_generate_through_smg(router: tuple[str, list[SimThread]]):
    url, engines = router
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "system", "content": "You are terse. " * 200},
            {"role": "user", "content": "Say hi"}]
    r = client.chat.completions.create(model="sim-llama-3-8b", messages=msgs, max_tokens=6,
                                       extra_body={"priority": 1})
    assert r.usage.completion_tokens == 6 and r.choices[0].message.content

    chunks = list(client.chat.completions.create(
        model="sim-llama-3-8b", messages=msgs, max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # deterministic, whichever engine served it
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # cache_aware kept affinity

    g = httpx.post(url + "/generate", timeout=30, json={
        "text": "hello there", "sampling_params": {"max_new_tokens": 5}}).json()
    assert g["meta_info"]["completion_tokens"] == 5
    assert g["meta_info"]["finish_reason"]["type"] == "length"

    seen = sum((e.sim.paths_seen for e in engines), start=type(engines[0].sim.paths_seen)())
    assert seen["/health"] or seen["/health_generate"]
    assert seen["/v1/chat/completions"] == 2 and seen["/generate"] == 1
    # smg learnt the model name from the engines' /server_info or /model_info.
    assert seen["/server_info"] + seen["/get_server_info"] + seen["/model_info"] \
        + seen["/get_model_info"] > 0, json.dumps(seen)
