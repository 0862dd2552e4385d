"""compat SDK against a real stack: sessions, variables, the decorator, errors, async."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import httpx2
import openai
import pytest

import compat
from compat import (
    AsyncSession,
    DeadlineExceeded,
    DependencyCycle,
    Session,
    SessionNotFound,
    UpstreamFailed,
    Variable,
    VariableConflict,
    VariableFailed,
    VariableNotFound,
    VariableTimeout,
    semantic_function,
)

MODEL = "sim-llama-3-8b"


@semantic_function(max_tokens=8)
def summarize(doc):  # type: ignore[no-untyped-def]
    """Summarize in one sentence: {{doc}}"""


@semantic_function(max_tokens=8, system="You are terse.")
def combine(a, b):  # type: ignore[no-untyped-def]
    """Combine {{a}} with {{b}}."""


class Recorder:
    """An httpx event hook that keeps (method, path, headers, body) of every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    def __call__(self, request: httpx2.Request) -> None:
        body = json.loads(request.content) if request.content else None
        path = request.url.path + (f"?{request.url.query.decode()}" if request.url.query else "")
        self.requests.append((request.method, path, dict(request.headers), body))


def url(stack: Any) -> str:
    return stack.url + "/v1"


def test_public_names() -> None:
    expected = {
        "AsyncSession", "AuthenticationError", "BadRequest", "DeadlineExceeded",
        "DependencyCycle", "EngineError", "NotFound", "ParrotError", "PayloadTooLarge",
        "RateLimited", "SemanticFunction", "Session", "SessionNotFound", "TemplateError",
        "UpstreamFailed", "Variable", "VariableConflict", "VariableFailed", "VariableNotFound",
        "VariableState", "VariableTimeout", "current_session", "escape", "semantic_function",
    }  # fmt: skip
    assert set(compat.__all__) == expected
    assert all(hasattr(compat, n) for n in compat.__all__)
    public = {
        n
        for n in dir(compat)
        if not n.startswith("_") and not isinstance(getattr(compat, n), ModuleType)
    }
    assert public == expected  # nothing public beyond __all__ (submodules aside)


def test_decorator_keeps_intermediate_values_on_the_server(stack: Any) -> None:
    rec = Recorder()
    http = httpx2.Client(event_hooks={"request": [rec]})
    with Session(base_url=url(stack), default_model=MODEL, http_client=http) as s:
        a = summarize(doc="first {{not a placeholder}} text")
        b = summarize(doc=a)
        c = combine(a=b, b="literal")
        assert isinstance(c, Variable) and not rec.requests[-1][1].endswith(c.name)
        value = c.get(timeout=30)
    assert isinstance(value, str) and value
    methods = [(m, p.split("?")[0]) for m, p, _, _ in rec.requests]
    sid = s.id
    assert methods == [("POST", "/v1/chat/completions")] * 3 + [
        ("GET", f"/v1/sessions/{sid}/variables/{c.name}")
    ]
    posts = rec.requests[:3]
    assert [h["x-parrot-output"] for _, _, h, _ in posts] == [a.name, b.name, c.name]
    assert all(h["x-parrot-async"] == "1" and h["x-parrot-session"] == sid for _, _, h, _ in posts)
    assert posts[0][3]["messages"] == [
        {"role": "user", "content": "Summarize in one sentence: first \\{{not a placeholder}} text"}
    ]
    assert posts[1][3]["messages"][0]["content"] == "Summarize in one sentence: {{%s}}" % a.name
    assert posts[2][3]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Combine {{%s}} with literal." % b.name},
    ]
    assert all(body["max_tokens"] == 8 and body["model"] == MODEL for _, _, _, body in posts)
    # the stack really ran the chain: the intermediate values exist server-side
    assert Session(base_url=url(stack), session_id=sid).get(a.name, timeout=5)


def test_set_get_graph_close_and_conflict(stack: Any) -> None:
    s = Session(openai.OpenAI(base_url=url(stack), api_key="EMPTY"), default_model=MODEL)
    doc = s.set("doc", "a document about radix trees")
    assert doc.get() == "a document about radix trees"
    assert s.get("doc", wait=0) == "a document about radix trees"
    with pytest.raises(VariableConflict) as exc:
        s.set("doc", "again")
    assert exc.value.status == 409
    out = summarize(doc=doc, session=s, output="short", criteria="throughput")
    assert out.name == "short" and out.get(timeout=30)
    assert out.ready() and out.status() == "ready"
    text = s.chat("Echo {{short}}", max_tokens=4)
    assert isinstance(text, str) and text
    graph = s.graph()
    assert {"requests", "edges"} <= graph.keys()
    assert any(r.get("output") == "short" for r in graph["requests"])
    with pytest.raises(VariableNotFound):
        s.get("nothing", timeout=1)
    s.close()
    with pytest.raises(SessionNotFound):
        s.graph()
    s.close()  # idempotent


def test_dependency_cycle_is_translated(stack: Any) -> None:
    s = Session(base_url=url(stack), default_model=MODEL)
    s.submit("uses {{y}}", output="x", max_tokens=4)
    with pytest.raises(DependencyCycle) as exc:
        s.submit("uses {{x}}", output="y", max_tokens=4)
    assert exc.value.status == 400 and exc.value.code == "dependency_cycle"
    s.close()  # cancel the request still waiting for y (else the gateway drains it at stop)


def test_failed_producer_fails_consumers(stack: Any) -> None:
    s = Session(base_url=url(stack), default_model=MODEL, timeout=1)
    a = s.submit("needs {{never_set}}", output="a", max_tokens=4)
    b = summarize(doc=a, session=s)
    with pytest.raises(VariableFailed) as exc_b:
        b.get(timeout=20)
    assert isinstance(exc_b.value, UpstreamFailed)
    assert exc_b.value.code == "upstream_failed" and "'a'" in exc_b.value.error
    with pytest.raises(DeadlineExceeded):
        a.get(timeout=20)
    with pytest.raises(UpstreamFailed):  # cached on the handle, no new request needed
        b.get()
    with pytest.raises(UpstreamFailed) as exc_sync:  # a sync request with a failed input: 424
        s.chat("Echo {{a}}", max_tokens=4)
    assert exc_sync.value.status == 424


def test_get_timeout_leaves_variable_pending(stack: Any) -> None:
    s = Session(base_url=url(stack), default_model=MODEL)
    v = s.submit("waits for {{later}}", output="v", max_tokens=4)
    with pytest.raises(VariableTimeout):
        v.get(timeout=0.2)
    assert not v.ready()
    s.set("later", "now")
    assert v.get(timeout=30)


def test_reserved_and_mismatched_parameters_are_refused() -> None:
    with pytest.raises(TypeError, match="must match"):

        @semantic_function
        def f(a, b):  # type: ignore[no-untyped-def]
            """only {{a}}"""

    with pytest.raises(TypeError, match="reserved"):

        @semantic_function
        def g(session):  # type: ignore[no-untyped-def]
            """{{session}}"""

    with pytest.raises(RuntimeError, match="no current session"):
        summarize(doc="x")


def test_variable_from_another_session_is_refused(stack: Any) -> None:
    s1 = Session(base_url=url(stack), default_model=MODEL)
    s2 = Session(base_url=url(stack), default_model=MODEL)
    v = s1.set("x", "text")
    with pytest.raises(ValueError, match="belongs to session"):
        summarize(doc=v, session=s2)


async def test_async_session(stack: Any) -> None:
    async with AsyncSession(base_url=url(stack)) as s:
        assert await s.model() == MODEL
        doc = await s.set("doc", "async text")
        a = await summarize(doc=doc)  # a coroutine inside an AsyncSession
        b = await combine.acall(a=a, b=[doc, "tail"])
        value = await b.aget(timeout=30)
        assert value and await b.astatus() == "ready"
        with pytest.raises(TypeError, match="aget"):
            b.__class__(b.name, s).get()
        assert await s.get(a.name, wait=1)
        assert (await s.graph())["requests"]
        with pytest.raises(VariableConflict):
            await s.set("doc", "again")
        await s.close()


async def test_sync_variable_aget_runs_in_thread(stack: Any) -> None:
    s = Session(base_url=url(stack), default_model=MODEL)
    v = await summarize.acall(doc="from async code", session=s)
    assert await v.aget(timeout=30) == v.get()
