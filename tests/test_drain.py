"""SIGTERM drain of `python -m gateway.cli serve`: readiness turns false at once while the
in-flight work (plain, streaming, semantic async with a long poll) finishes; exit code 0."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.testing import serve_process

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"


def _chat(url: str, i: int) -> tuple[int, str]:
    body = {"messages": [{"role": "user", "content": f"drain {i}"}], "max_tokens": 250}
    r = httpx.post(url + CHAT, json=body, timeout=60)
    return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text


def _stream(url: str) -> tuple[int, str]:
    text = ""
    with httpx.stream("POST", url + CHAT, timeout=60, json={
            "messages": [{"role": "user", "content": "drain stream"}], "max_tokens": 250,
            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                text += "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])
        return r.status_code, text


def test_sigterm_drains_then_exits_0(tmp_path: Path) -> None:
    env = {"PARROT_SIM_TIME_SCALE": "1.0", "PARROT_DRAIN_TIMEOUT_S": "30"}
    with serve_process(tmp_path / "serve.log", env) as (url, proc):
        # a semantic request submitted async, and a client long-polling its output
        r = httpx.post(url + CHAT, headers={"X-Parrot-Session": "d", "X-Parrot-Async": "1",
                                            "X-Parrot-Output": "out"},
                       json={"messages": [{"role": "user", "content": "bg"}], "max_tokens": 250})
        assert r.status_code == 200
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            plain = [pool.submit(_chat, url, i) for i in range(6)]
            stream = pool.submit(_stream, url)
            poll = pool.submit(lambda: httpx.get(url + "/v1/sessions/d/variables/out?wait=30",
                                                 timeout=60).json())
            time.sleep(0.5)  # all of them are in flight (each takes ~1.5 s of engine time)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            ready = httpx.get(url + "/ready", timeout=5)
            assert ready.status_code == 503 and "draining" in ready.json()["problems"]
            assert any(not f.done() for f in plain)  # readiness went false before work ended
            results = [f.result(timeout=60) for f in plain]
            streamed = stream.result(timeout=60)
            polled = poll.result(timeout=60)
        assert all(code == 200 and text for code, text in results), results
        assert streamed[0] == 200 and streamed[1]
        assert polled["status"] == "ready" and polled["value"], polled
        assert proc.wait(timeout=40) == 0
        print(f"\ndrain: {len(results) + 2} in-flight requests finished, exit 0 after "
              f"{time.monotonic() - t_term:.1f}s")
    text = (tmp_path / "serve.log").read_text()
    assert "draining" in text
    assert "drain 3" not in text and "drain stream" not in text  # no prompt text in logs
