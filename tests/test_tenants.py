"""Tenants: API keys map to tenants; sessions, variables and graphs are namespaced so
another tenant's session id reads as 404 (never data) for every operation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.errors import PermissionDenied, Unauthorized
from gateway.auth import Authenticator
from gateway.testing import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

KEY_A = "sk-alpha-0123456789abcdef"
KEY_B = "sk-bravo-fedcba9876543210"
KEY_M = "sk-model-limited-55555"
MSG = [{"role": "user", "content": "tell me a secret prompt text"}]
CHAT = "/v1/chat/completions"


@pytest.fixture
def keys_yaml(tmp_path: Path) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  {KEY_A}: {{tenant: alpha}}\n"
        f"  {KEY_B}: {{tenant: bravo, rpm: 1000}}\n"
        f"  {KEY_M}: {{tenant: gamma, models: [some-other-model]}}\n"
    )
    return str(path)


@pytest.fixture
def tenants(redis_url: str, keys_yaml: str) -> Iterator[Stack]:
    s = start_stack(redis_url, engines=1, api_keys=keys_yaml)
    yield s
    s.stop()


def client(stack: Stack, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=stack.url, headers=headers, timeout=30)


def test_authenticator_unit(keys_yaml: str) -> None:
    auth = Authenticator.from_file(keys_yaml)
    assert auth.enabled
    assert auth.authenticate(f"Bearer {KEY_A}").tenant == "alpha"
    assert auth.authenticate(f"bearer {KEY_B} ").tenant == "bravo"
    for bad in (None, "", "Bearer", f"Basic {KEY_A}", "Bearer sk-alpha", f"Bearer {KEY_A}x"):
        with pytest.raises(Unauthorized):
            auth.authenticate(bad)
    with pytest.raises(PermissionDenied):
        auth.authenticate(f"Bearer {KEY_M}").check_model("sim-llama-3-8b")
    assert KEY_A not in repr(auth)  # only digests are held
    assert Authenticator.from_file(None).authenticate(None).tenant == "default"


def test_keys_are_required_and_models_enforced(tenants: Stack) -> None:
    body = {"messages": MSG, "max_tokens": 2}
    for key in (None, "sk-wrong"):
        r = client(tenants, key).post(CHAT, json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert client(tenants, key).get("/v1/sessions/s/variables/x").status_code == 401
    assert client(tenants, KEY_A).post(CHAT, json=body).status_code == 200
    r = client(tenants, KEY_M).post(CHAT, json=body)
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"
    assert client(tenants, None).get("/health").status_code == 200  # probes stay open


def test_sessions_are_isolated_between_tenants(tenants: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    a, b = client(tenants, KEY_A), client(tenants, KEY_B)
    # alpha builds a session: an input, an async producer, a pending variable
    assert a.put("/v1/sessions/shared/variables/doc", json={"value": "alpha-private"}).status_code == 200
    r = a.post(CHAT, headers={"X-Parrot-Session": "shared", "X-Parrot-Async": "1",
                              "X-Parrot-Output": "summary"},
               json={"messages": [{"role": "user", "content": "sum {{doc}}"}], "max_tokens": 4})
    assert r.status_code == 200
    r = a.post(CHAT, headers={"X-Parrot-Session": "shared", "X-Parrot-Async": "1",
                              "X-Parrot-Output": "later", "X-Parrot-Timeout": "20"},
               json={"messages": [{"role": "user", "content": "{{never}}"}], "max_tokens": 2})
    assert r.status_code == 200
    assert a.get("/v1/sessions/shared/variables/summary?wait=10").json()["status"] == "ready"

    # bravo sees nothing of it: read, long-poll, graph, delete all 404 without data
    for path in ("/v1/sessions/shared/variables/doc", "/v1/sessions/shared/variables/summary",
                 "/v1/sessions/shared/variables/later?wait=2", "/v1/sessions/shared"):
        t0 = time.monotonic()
        r = b.get(path)
        assert r.status_code == 404, (path, r.text)
        assert "alpha-private" not in r.text
        assert time.monotonic() - t0 < 1.5  # a long poll on a foreign session does not wait
    assert b.delete("/v1/sessions/shared").status_code == 404

    # bravo's writes to the same id land in bravo's own namespace
    assert b.put("/v1/sessions/shared/variables/doc", json={"value": "bravo-own"}).status_code == 200
    r = b.post(CHAT, headers={"X-Parrot-Session": "shared", "X-Parrot-Output": "summary"},
               json={"messages": [{"role": "user", "content": "sum {{doc}}"}], "max_tokens": 4})
    assert r.status_code == 200, r.text  # no 409: alpha's producer of 'summary' is not bravo's
    assert b.get("/v1/sessions/shared/variables/doc").json()["value"] == "bravo-own"
    assert a.get("/v1/sessions/shared/variables/doc").json()["value"] == "alpha-private"
    graph_b = b.get("/v1/sessions/shared").json()
    graph_a = a.get("/v1/sessions/shared").json()
    assert len(graph_b["requests"]) == 1 and len(graph_a["requests"]) == 2
    assert {x["id"] for x in graph_a["requests"]}.isdisjoint({x["id"] for x in graph_b["requests"]})

    # a long poll of alpha is woken by alpha's write, not by bravo's write of the same name
    got: dict[str, httpx.Response] = {}
    waiter = threading.Thread(target=lambda: got.setdefault(
        "r", a.get("/v1/sessions/shared/variables/never?wait=3")))
    waiter.start()
    time.sleep(0.3)
    assert b.put("/v1/sessions/shared/variables/never", json={"value": "bravo"}).status_code == 200
    waiter.join(10)
    assert got["r"].json()["status"] == "pending"

    # bravo deleting its session leaves alpha's intact; alpha's delete cancels its own
    assert b.delete("/v1/sessions/shared").status_code == 200
    assert a.get("/v1/sessions/shared/variables/summary").json()["status"] == "ready"
    assert a.delete("/v1/sessions/shared").status_code == 200
    assert a.get("/v1/sessions/shared").status_code == 404

    # keys never reach the logs
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY_A, KEY_B, "alpha-private", "bravo-own"):
        assert secret not in text
