"""Every log line of a request carries its id, also from tasks it spawned."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal

import httpx
import pytest

from gateway import logs
from gateway.app import RequestIdMiddleware
from gateway.metrics import Metrics
from gateway.testing import serve_process, start_engine


def test_log_lines_carry_the_request_id() -> None:
    seen: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        async def background() -> None:
            seen.append(logs.request_id.get())
            logging.getLogger("parrot.test").warning("inside a spawned task")

        await asyncio.create_task(background())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("parrot.test")
    logger.addHandler(handler)
    try:
        mw = RequestIdMiddleware(app, Metrics())
        sent: list[dict] = []

        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            sent.append(message)

        scope = {"type": "http", "path": "/health", "headers": [(b"x-request-id", b"rid-42")]}
        asyncio.run(mw(scope, receive, send))
    finally:
        logger.removeHandler(handler)
    assert seen == ["rid-42"]
    assert "[rid-42]" in stream.getvalue()
    assert (b"x-request-id", b"rid-42") in sent[0]["headers"]
    assert logs.request_id.get() == "-"  # reset after the request


def test_session_of_header_or_path() -> None:
    assert logs.session_of("/v1/chat/completions", "s-1") == "s-1"
    assert logs.session_of("/v1/sessions/abc/variables/x", None) == "abc"
    assert logs.session_of("/ui/sessions/abc", None) == "abc"
    assert logs.session_of("/ui/api/sessions/abc", None) == "abc"
    assert logs.session_of("/v1/sessions/abc/view", "") == "abc"
    assert logs.session_of("/v1/chat/completions", "bad id\nforged") is None
    assert logs.session_of("/v1/models", None) is None


def test_json_lines_carry_ids_and_stay_one_line() -> None:
    handler_out = io.StringIO()
    handler = logging.StreamHandler(handler_out)
    handler.setFormatter(logs.formatter("json"))
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger("parrot.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    rid, sid = logs.request_id.set("rid-7"), logs.session_id.set("sess-9")
    try:
        logger.info("two\nlines %s", "here")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logs.request_id.reset(rid)
        logs.session_id.reset(sid)
        logger.removeHandler(handler)
    logger.warning("outside a request")  # no handler now: nothing written
    lines = handler_out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines here" and first["level"] == "INFO"
    assert first["logger"] == "parrot.test.json"
    assert first["request_id"] == "rid-7" and first["session_id"] == "sess-9"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "ValueError: boom" in second["exception"]


@pytest.mark.timeout(120)
def test_serve_log_format_json(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """`--log-format json` (here PARROT_LOG_FORMAT): every line the server writes is one JSON
    object, and a request's lines name its request and session. (Its engine and Redis are
    given, so the process has no children writing to the same output in their own format.)"""
    engine = start_engine(0.05)
    env = {"PARROT_LOG_FORMAT": "json", "PARROT_BACKEND": engine.url, "PARROT_REDIS": redis_url}
    try:
        with serve_process(tmp_path / "serve.log", env) as (url, proc):
            r = httpx.put(url + "/v1/sessions/log-s1/variables/x", json={"value": "v"}, timeout=10)
            assert r.status_code == 200
            r = httpx.post(url + "/v1/sessions/log-s1/view", headers={"X-Request-Id": "rid-log-1"},
                           timeout=10)
            assert r.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    finally:
        engine.stop()
    lines = [x for x in (tmp_path / "serve.log").read_text().splitlines() if x.strip()]
    records = [json.loads(line) for line in lines]  # fails on any non-JSON line
    assert len(records) >= 3
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    minted = [r for r in records if r.get("request_id") == "rid-log-1"]
    assert minted and all(r["session_id"] == "log-s1" for r in minted)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines too
