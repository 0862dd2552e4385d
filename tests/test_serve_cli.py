"""`parrot-gateway serve` as the README says: embedded Redis, simulated engines, SIGTERM."""

from __future__ import annotations

import signal
import subprocess

import openai
import pytest

from gateway.testing import serve_process

pytestmark = pytest.mark.timeout(120)


def test_serve_embedded_defaults_and_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with serve_process(tmp_path / "serve.log", {"PARROT_SIM_TIME_SCALE": "0.05"}) as (url, proc):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        model = client.models.list().data[0].id
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=5)
        assert r.choices[0].message.content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    text = (tmp_path / "serve.log").read_text()
    assert "SIMULATED ENGINES" in text
    assert "EMBEDDED REDIS" in text


def test_console_script_is_installed() -> None:
    out = subprocess.run(["parrot-gateway", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--backend", "--backend-kind", "--redis", "--sim-engines",
                 "--api-keys", "--config"):
        assert flag in out.stdout
