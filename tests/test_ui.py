"""The session view's HTTP side: auth (API key or signed link), tenant isolation, the
page's data, the tenant's session list and its Redis index. The browser side is in
test_ui_browser.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from common.errors import NotFound
from gateway.session_index import SessionIndex
from gateway.store import SessionStore
from gateway.testing import Stack, start_stack
from gateway.ui import links
from gateway.ui.routes import PREVIEW_CHARS, view_payload

pytestmark = pytest.mark.timeout(120)
KA = {"Authorization": "Bearer key-a"}
KB = {"Authorization": "Bearer key-b"}


@pytest.fixture
def ui_stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {"key-a": {"tenant": "a"}, "key-b": {"tenant": "b"}}}))
    s = start_stack(redis_url, engines=1, time_scale=0.02, replicas=2, api_keys=str(keys))
    yield s
    s.stop()


def run(url: str, headers: dict[str, str], sid: str, content: str, output: str | None = None) -> None:
    h = {**headers, "X-Parrot-Session": sid}
    if output:
        h["X-Parrot-Output"] = output
    r = httpx.post(url + "/v1/chat/completions", headers=h, timeout=60, json={
        "model": "", "messages": [{"role": "user", "content": content}], "max_tokens": 6})
    assert r.status_code == 200, r.text


def listed_ids(url: str, headers: dict[str, str]) -> list[str]:
    r = httpx.get(url + "/ui/api/sessions", headers=headers)
    assert r.status_code == 200, r.text
    return [s["session"] for s in r.json()["sessions"]]


# ---------------------------------------------------------------- pure parts


def test_signed_tokens() -> None:
    secret = b"s" * 32
    token = links.sign(secret, "acme", "sess-1", expires_at=1000)
    assert links.verify(secret, token, "sess-1", now=999.0) == "acme"
    payload, mac = token.split(".")
    forged = links.sign(secret, "other", "sess-1", 1000).split(".")[0] + "." + mac
    for bad in (forged, token + "x", payload + "." + mac[:-2], "", "abc", "a.b.c", "!!.??"):
        with pytest.raises(links.InvalidToken):
            links.verify(secret, bad, "sess-1", now=999.0)
    with pytest.raises(links.InvalidToken):
        links.verify(b"t" * 32, token, "sess-1", now=999.0)  # another deployment's key
    with pytest.raises(links.InvalidToken, match="expired"):
        links.verify(secret, token, "sess-1", now=1000.0)
    with pytest.raises(NotFound):
        links.verify(secret, token, "sess-2", now=999.0)  # genuine, but for another session
    assert links.InvalidToken("x").status == 401


def test_view_payload_cuts_variable_values() -> None:
    graph = {"session": "s", "requests": [], "variables": [
        {"name": "big", "status": "ready", "value": "x" * 10_000, "error": None},
        {"name": "p", "status": "pending", "value": None, "error": None}]}
    out = view_payload(graph, now=5.0)
    big, pending = out["variables"]
    assert big == {"name": "big", "status": "ready", "error": None, "preview": "x" * PREVIEW_CHARS,
                   "chars": 10_000}
    assert pending["preview"] is None and out["now"] == 5.0


# ---------------------------------------------------------------- pages and data


def test_page_and_data_need_the_key_and_hide_other_tenants(ui_stack: Stack) -> None:
    url = ui_stack.url
    run(url, KA, "s1", "Tell me about parrots.", output="a")
    run(url, KA, "s1", "Summarise: {{a}}", output="b")

    assert httpx.get(url + "/ui/sessions/s1").status_code == 401
    other = httpx.get(url + "/ui/sessions/s1", headers=KB)
    assert other.status_code == 404 and other.json()["error"]["code"] == "session_not_found"
    assert httpx.get(url + "/ui/api/sessions/s1", headers=KB).status_code == 404
    assert httpx.get(url + "/ui/sessions/nope", headers=KA).status_code == 404
    assert httpx.get(url + "/ui/sessions/a%20b", headers=KA).status_code == 400

    page = httpx.get(url + "/ui/sessions/s1", headers=KA)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '"session":"s1"' in page.text and "key-a" not in page.text
    assert '<base href="/ui/">' in page.text

    data = httpx.get(url + "/ui/api/sessions/s1", headers=KA).json()
    by_output = {r["output"]: r for r in data["requests"]}
    assert set(by_output) == {"a", "b"} and data["critical_path"]
    for r in by_output.values():
        assert r["status"] == "done" and r["ready_at"] <= r["started_at"] <= r["finished_at"]
        # Engine calls are not streamed by default (engine_streaming): no first-token time,
        # the page shows one engine phase. test_ui_browser.py streams them.
        assert r["first_token_at"] is None
    assert by_output["b"]["inputs"] == ["a"]
    assert {v["name"]: v["chars"] > 0 for v in data["variables"]} == {"a": True, "b": True}

    assets = [("js/session.js", "javascript"), ("style.css", "css"), ("js/layout.js", "javascript")]
    for asset, kind in assets:
        r = httpx.get(f"{url}/ui/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"], asset


def test_signed_link_opens_one_session_on_any_replica(ui_stack: Stack) -> None:
    url, other_replica = ui_stack.url, ui_stack.extra_gateways[0].url
    run(url, KA, "s1", "hello", output="a")
    run(url, KA, "s2", "hello again", output="a")
    assert httpx.post(url + "/v1/sessions/s1/view").status_code == 401
    assert httpx.post(url + "/v1/sessions/s1/view", headers=KB).status_code == 404
    minted = httpx.post(url + "/v1/sessions/s1/view", headers=KA)
    assert minted.status_code == 200, minted.text
    link = minted.json()
    assert link["path"].startswith("/ui/sessions/s1?token=") and "key-a" not in link["url"]
    token = link["path"].split("token=")[1]
    # Replicas share the signing key through Redis: the link works on another one.
    for base in (url, other_replica):
        page = httpx.get(base + link["path"])
        assert page.status_code == 200 and token in page.text
        data = httpx.get(base + "/ui/api/sessions/s1", headers={"X-Parrot-View-Token": token})
        assert data.status_code == 200 and data.json()["session"] == "s1"
    # The token opens that session only, and a tampered one nothing.
    assert httpx.get(url + f"/ui/sessions/s2?token={token}").status_code == 404
    assert httpx.get(url + "/ui/api/sessions/s2", headers={"X-Parrot-View-Token": token}).status_code == 404
    assert httpx.get(url + f"/ui/sessions/s1?token={token[:-3]}abc").status_code == 401
    # A token is not an API key.
    assert httpx.get(url + "/v1/sessions/s1", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_recent_sessions_per_tenant(ui_stack: Stack) -> None:
    url = ui_stack.url
    before = httpx.get(url + "/metrics").text
    for sid in ("s1", "s2"):
        run(url, KA, sid, "hi", output="a")
    run(url, KB, "s3", "hi", output="a")
    listed = httpx.get(url + "/ui/api/sessions", headers=KA).json()
    assert listed["tenant"] == "a"
    assert [s["session"] for s in listed["sessions"]] == ["s2", "s1"]  # newest first
    s2 = listed["sessions"][0]
    assert s2["requests"] == 1 and s2["variables"] == 1 and s2["created"] <= s2["last_active"]
    assert listed_ids(url, KB) == ["s3"]
    assert httpx.get(url + "/ui/api/sessions").status_code == 401
    assert httpx.get(url + "/ui/api/sessions?limit=0", headers=KA).status_code == 400
    assert httpx.delete(url + "/v1/sessions/s1", headers=KA).status_code == 200
    assert listed_ids(url, KA) == ["s2"]
    page = httpx.get(url + "/ui", headers=KA)
    assert page.status_code == 200 and '"tenant":"a"' in page.text

    def sessions_total(text: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith("parrot_sessions_total ")), "x 0")
        return float(line.split()[1])

    assert sessions_total(httpx.get(url + "/metrics").text) - sessions_total(before) == 3


# ---------------------------------------------------------------- the index


def test_session_index_trims_and_throttles(redis_url: str) -> None:
    async def main() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        store = SessionStore(redis)
        now = [1000.0]
        new: list[int] = []
        index = SessionIndex(redis, store, ttl_s=100, keep=3, touch_every_s=5,
                             clock=lambda: now[0], on_new=lambda: new.append(1))
        try:
            for i in range(5):
                await store.put_variable("t", f"s{i}", "x", "v")
                await index.touch("t", f"s{i}")
                now[0] += 1
            assert [s["session"] for s in await index.recent("t")] == ["s4", "s3", "s2"]
            assert len(new) == 5
            await index.touch("t", "s2")  # throttled: seen 3 s ago
            assert (await redis.zscore(index.key("t"), "s2")) == 1002.0
            now[0] += 10
            await index.touch("t", "s2")
            assert (await redis.zscore(index.key("t"), "s2")) == 1015.0 and len(new) == 5
            now[0] += 95  # s3 and s4 are past the TTL now
            await index.touch("t", "s0")
            assert await redis.zrange(index.key("t"), 0, -1) == [b"s2", b"s0"]
            assert 0 < await redis.ttl(index.key("t")) <= 101
            await store.delete_session("t", "s2")
            assert [s["session"] for s in await index.recent("t")] == ["s0"]  # gone ones drop
            assert await redis.zrange(index.key("t"), 0, -1) == [b"s0"]
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_session_index_is_best_effort() -> None:
    async def main() -> None:
        redis = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
        index = SessionIndex(redis, SessionStore(redis), ttl_s=100)
        await index.touch("t", "s")  # logged, not raised: a request never fails for the UI
        await index.forget("t", "s")
        await redis.aclose()

    asyncio.run(main())
