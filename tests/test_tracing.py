"""OpenTelemetry tracing: span tree and attributes of a real session, W3C trace context
in from the client and out to the engines, retries as separate attempt spans, and
nothing at all (no spans, no SDK) when tracing is off.

The gateway and the simulated engines are real uvicorn servers; each engine is wrapped
in a small ASGI recorder that notes the headers of every generation call (and can
refuse the first ones with a 503, to force a retry on the other engine).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from backends.sim.app import create_sim_app
from backends.sim.config import SimConfig
from common.serving import UvicornThread
from gateway.app import create_app
from gateway.settings import Settings
from gateway.testing import wait_ready
from gateway.tracing import client_trace_headers, wanted

pytestmark = pytest.mark.timeout(60)

KEY = "sk-trace-test"
GENERATION = ("/v1/chat/completions", "/v1/completions", "/generate")


@dataclass
class Faults:
    """503s still to give, shared by every engine (the first call fails wherever it lands)."""

    left: list[int] = field(default_factory=list)


class Recorder:
    """ASGI wrapper of an engine: records each generation call's headers; may refuse it."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app, self.faults = app, faults
        self.calls: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION:
            self.calls.append({k.decode(): v.decode() for k, v in scope["headers"]})
            try:
                self.faults.left.pop()
            except IndexError:
                pass
            else:
                body = b'{"error": {"message": "overloaded (test)", "code": 503}}'
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@dataclass
class Traced:
    url: str
    exporter: InMemorySpanExporter
    engines: list[Recorder]
    faults: Faults

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def engine_calls(self) -> list[dict[str, str]]:
        return [c for e in self.engines for c in e.calls]


@pytest.fixture
def traced(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Iterator[Traced]:
    """Two recorded simulated engines behind a gateway whose spans go to memory;
    ``@pytest.mark.parametrize("traced", [False], indirect=True)`` turns tracing off."""
    on = getattr(request, "param", True)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": {KEY: {"tenant": "acme"}}}))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    faults = Faults()
    recorders = [Recorder(create_sim_app(SimConfig(time_scale=0.02)), faults) for _ in range(2)]
    servers: list[UvicornThread] = []
    try:
        for r in recorders:
            servers.append(UvicornThread(r).start())
        settings = Settings(backend=[s.url for s in servers], redis=redis_url, api_keys=str(keys),
                            health_interval_s=0.5, drain_timeout_s=2.0, tracing=on)
        gateway = UvicornThread(create_app(settings, tracer_provider=provider)).start()
        servers.append(gateway)
        wait_ready(gateway.url, timeout=20)
        yield Traced(gateway.url, exporter, recorders, faults)
    finally:
        for s in reversed(servers):
            s.stop()


def _client_context() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _chat(prompt: str, max_tokens: int = 8) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


def _headers(traceparent: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "traceparent": traceparent,
            "tracestate": "client=1", **extra}


def _wait_spans(t: Traced, timeout: float = 10.0, **counts: int) -> list[ReadableSpan]:
    """The finished spans once there are ``counts`` of each kind (``server=``, ``run=``):
    a span may end just after the client has its answer."""
    kinds = {"server": lambda s: s.kind == SpanKind.SERVER, "run": lambda s: s.name == "parrot.run"}
    deadline = time.monotonic() + timeout
    while True:
        spans = t.spans()
        done = all(sum(map(kinds[k], spans)) >= n for k, n in counts.items())
        if done or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans:
        if s.parent is not None and s.parent.span_id == parent.context.span_id:
            out.setdefault(s.name, []).append(s)
    return out


def _parent_of(call: dict[str, str]) -> tuple[int, int] | None:
    """(trace id, parent span id) of a sampled W3C ``traceparent`` header."""
    tp = call.get("traceparent")
    if tp is None:
        return None
    version, trace_id, span_id, flags = tp.split("-")
    assert version == "00" and int(flags, 16) & 1, tp
    return int(trace_id, 16), int(span_id, 16)


def _ids(span: ReadableSpan) -> tuple[int, int]:
    return span.context.trace_id, span.context.span_id


def test_session_span_tree_and_attributes(traced: Traced) -> None:
    """A 3-step session (async, sync, streamed): every request continues the client's
    trace; sync and streamed runs are children of their request, the async run is a
    trace of its own linked to it; each engine got its attempt span as parent."""
    trace_id, client_span, tp = _client_context()
    sid = "trace-" + secrets.token_hex(4)
    base = {"X-Parrot-Session": sid}
    with httpx.Client(base_url=traced.url, timeout=30) as c:
        r1 = c.post("/v1/chat/completions", json=_chat("Name a colour of parrots."), headers=_headers(
            tp, **base, **{"X-Parrot-Output": "a", "X-Parrot-Async": "1", "X-Request-Id": "req-1"}))
        assert r1.status_code == 200, r1.text
        r2 = c.post("/v1/chat/completions", json=_chat("Describe {{a}} in a word."), headers=_headers(
            tp, **base, **{"X-Parrot-Output": "b", "X-Request-Id": "req-2"}))
        assert r2.status_code == 200, r2.text
        h3 = _headers(tp, **base, **{"X-Parrot-Output": "c", "X-Request-Id": "req-3"})
        with c.stream("POST", "/v1/chat/completions",
                      json={**_chat("Write a line about {{b}}."), "stream": True}, headers=h3) as r3:
            assert r3.status_code == 200
            assert "[DONE]" in r3.read().decode()
        auth = {"Authorization": f"Bearer {KEY}"}
        assert c.get(f"/v1/sessions/{sid}/variables/c", headers=auth).json()["status"] == "ready"
        graph = c.get(f"/v1/sessions/{sid}", headers=auth).json()
    spans = _wait_spans(traced, run=3, server=5)
    records = {r["id"]: r for r in graph["requests"]}
    assert len(records) == 3
    # Named by the route the router matched, not the raw path.
    assert "GET /v1/sessions/{sid}/variables/{name}" in {s.name for s in spans if s.kind == SpanKind.SERVER}

    servers = {s.attributes["parrot.request.id"]: s for s in spans
               if s.kind == SpanKind.SERVER and s.name == "POST /v1/chat/completions"}
    assert set(servers) == {"req-1", "req-2", "req-3"}
    for server in servers.values():
        # The client's trace continues: same trace id, its span as (remote) parent.
        assert server.context.trace_id == int(trace_id, 16)
        assert server.parent is not None and server.parent.is_remote
        assert server.parent.span_id == int(client_span, 16)
        a = server.attributes
        assert a["parrot.session.id"] == sid and a["parrot.tenant"] == "acme"
        assert a["http.response.status_code"] == 200 and a["http.route"] == "/v1/chat/completions"
        (register,) = _children(spans, server)["parrot.register"]
        assert register.attributes["parrot.session.id"] == sid
        assert register.attributes["parrot.session.request.id"] in records

    runs = {s.attributes["parrot.request.id"]: s for s in spans if s.name == "parrot.run"}
    assert set(runs) == {"req-1", "req-2", "req-3"}
    # Async: a trace of its own, linked to the submitting request, which names it.
    detached = runs["req-1"]
    assert detached.parent is None and detached.context.trace_id != int(trace_id, 16)
    assert [link.context.span_id for link in detached.links] == [servers["req-1"].context.span_id]
    assert servers["req-1"].attributes["parrot.run.trace_id"] == f"{detached.context.trace_id:032x}"
    # Sync and streamed: children of their request's span, in the client's trace.
    for rid in ("req-2", "req-3"):
        assert runs[rid].parent is not None
        assert runs[rid].parent.span_id == servers[rid].context.span_id
        assert runs[rid].context.trace_id == int(trace_id, 16)

    calls = traced.engine_calls()
    for rid, run in runs.items():
        a = run.attributes
        rec = records[a["parrot.session.request.id"]]
        assert a["parrot.status"] == "done" == rec["status"]
        assert a["parrot.tenant"] == "acme" and a["parrot.session.id"] == sid
        assert a["parrot.engine"] == rec["engine"]
        assert a["parrot.objective"] == rec["criteria_effective"]
        assert a.get("parrot.task_group") == rec["group_effective"]
        assert a["parrot.tokens.cached"] == rec["cached_tokens"]
        assert a["gen_ai.usage.input_tokens"] == rec["prompt_tokens"] > 0
        assert a["gen_ai.usage.output_tokens"] == rec["completion_tokens"] > 0
        assert a["parrot.retry_count"] == 0
        kids = _children(spans, run)
        assert len(kids["parrot.queue"]) == 1 and len(kids["parrot.engine"]) == 1
        (engine,) = kids["parrot.engine"]
        assert engine.kind == SpanKind.CLIENT
        assert engine.attributes["parrot.attempt"] == 1
        assert engine.attributes["parrot.outcome"] == "ok"
        assert engine.attributes["parrot.engine"] == rec["engine"]
        assert engine.attributes["parrot.tokens.cached"] == rec["cached_tokens"]
        assert kids["parrot.queue"][0].attributes["parrot.engine"] == rec["engine"]
        (write,) = kids["parrot.write_output"]
        assert write.attributes["parrot.variable"] == rec["output"]
        assert write.attributes["parrot.variable.status"] == "ready"
        assert ("parrot.wait_inputs" in kids) == bool(rec["inputs"])
        # The engine was called with the attempt's span as parent (client's trace kept).
        matching = [c for c in calls if _parent_of(c) == _ids(engine)]
        assert len(matching) == 1, (_ids(engine), [c.get("traceparent") for c in calls])
        assert matching[0].get("tracestate") == ("client=1" if rid != "req-1" else None)
    waits = _children(spans, runs["req-2"])["parrot.wait_inputs"]
    assert waits[0].attributes["parrot.inputs"] == ("a",)
    assert waits[0].status.status_code == StatusCode.UNSET  # waited, and the input came


def test_input_that_never_comes_fails_the_wait_and_the_run(traced: Traced) -> None:
    _, _, tp = _client_context()
    h = _headers(tp, **{"X-Parrot-Session": "trace-late", "X-Parrot-Output": "out",
                        "X-Parrot-Timeout": "0.5", "X-Request-Id": "req-late"})
    with httpx.Client(base_url=traced.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=_chat("Use {{never}}."), headers=h)
    assert r.status_code == 504, r.text
    spans = _wait_spans(traced, run=1, server=1)
    (run,) = [s for s in spans if s.name == "parrot.run"]
    assert run.status.status_code == StatusCode.ERROR and run.attributes["parrot.status"] == "failed"
    kids = _children(spans, run)
    (wait,) = kids["parrot.wait_inputs"]
    assert wait.status.status_code == StatusCode.ERROR
    assert wait.attributes["error.type"] == "GatewayTimeout"
    (write,) = kids["parrot.write_output"]
    assert write.attributes["parrot.variable.status"] == "failed"
    assert "parrot.engine" not in kids  # it never reached an engine
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.attributes["http.response.status_code"] == 504


def test_retry_shows_two_engine_attempts(traced: Traced) -> None:
    """The first engine call is refused (503): two attempt spans, on two engines, the
    first marked ``retry``; the request's span counts one retry; each engine saw its
    own attempt's span as parent."""
    traced.faults.left.append(1)
    trace_id, _, tp = _client_context()
    with httpx.Client(base_url=traced.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=_chat("Say something."),
                   headers=_headers(tp, **{"X-Request-Id": "req-retry"}))
    assert r.status_code == 200, r.text
    spans = _wait_spans(traced, server=1)
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    kids = _children(spans, server)
    attempts = sorted(kids["parrot.engine"], key=lambda s: s.attributes["parrot.attempt"])
    assert [s.attributes["parrot.attempt"] for s in attempts] == [1, 2]
    assert [s.attributes["parrot.outcome"] for s in attempts] == ["retry", "ok"]
    assert attempts[0].attributes["http.response.status_code"] == 503
    assert attempts[0].attributes["error.type"] == "EngineServerError"
    assert attempts[0].attributes["parrot.engine"] != attempts[1].attributes["parrot.engine"]
    assert len(kids["parrot.queue"]) == 2
    assert server.attributes["parrot.retry_count"] == 1
    assert server.attributes["parrot.engine"] == attempts[1].attributes["parrot.engine"]
    assert server.status.status_code != StatusCode.ERROR
    assert sorted(_parent_of(c) for c in traced.engine_calls()) == sorted(_ids(s) for s in attempts)
    assert all(s.context.trace_id == int(trace_id, 16) for s in attempts)


def test_sampled_out_request_records_nothing_but_passes_its_context_on(traced: Traced) -> None:
    """The client's trace is not sampled (flags 00): the gateway records no span of it
    (parent-based sampling) and the engine still gets the trace, flagged unsampled."""
    trace_id, span_id, _ = _client_context()
    with httpx.Client(base_url=traced.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=_chat("Hi."),
                   headers=_headers(f"00-{trace_id}-{span_id}-00"))
    assert r.status_code == 200, r.text
    assert [s.name for s in traced.spans()] == []
    (call,) = traced.engine_calls()
    version, tid, _, flags = call["traceparent"].split("-")
    assert (tid, int(flags, 16) & 1) == (trace_id, 0)


@pytest.mark.parametrize("traced", [False], indirect=True)
def test_tracing_off_records_nothing_and_passes_the_client_context_on(traced: Traced) -> None:
    _, _, tp = _client_context()
    with httpx.Client(base_url=traced.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json=_chat("Hello."), headers=_headers(tp))
        assert r.status_code == 200, r.text
        r = c.post("/v1/chat/completions", json=_chat("Hello."),
                   headers=_headers("00-not-a-traceparent", **{"X-Parrot-Session": "off-1"}))
        assert r.status_code == 200, r.text
    assert traced.spans() == []
    calls = traced.engine_calls()
    assert len(calls) == 2
    assert calls[0]["traceparent"] == tp and calls[0]["tracestate"] == "client=1"
    assert "traceparent" not in calls[1]  # malformed: dropped, not forwarded


def test_tracing_off_imports_no_tracing_sdk(tmp_path: Path) -> None:
    """Off, the gateway never imports the SDK's tracing (redis-py alone may import
    ``opentelemetry.sdk.metrics`` when the SDK is installed)."""
    code = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.settings import Settings\n"
        "app = create_app(Settings(redis='redis://127.0.0.1:1', backend=['http://127.0.0.1:1']))\n"
        "assert not app.state.gateway.tracing.enabled\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', "
        "'opentelemetry.exporter', 'opentelemetry.propagate', 'gateway.tracing_otel'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_switch_follows_the_setting_and_the_standard_variables() -> None:
    assert not wanted(False, {})
    assert wanted(True, {})
    assert wanted(False, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert wanted(False, {"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted(False, {"OTEL_TRACES_EXPORTER": "none"})
    assert wanted(False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert wanted(False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not wanted(True, {"OTEL_SDK_DISABLED": "true"})
    assert not wanted(False, {"OTEL_SERVICE_NAME": "gw"})  # naming alone turns nothing on


def test_client_trace_headers_are_validated() -> None:
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    assert client_trace_headers(tp.encode(), b"k=v") == {"traceparent": tp, "tracestate": "k=v"}
    assert client_trace_headers(tp.upper().encode(), None) == {"traceparent": tp}
    assert client_trace_headers(b"00-xyz", b"k=v") is None
    assert client_trace_headers(("ff" + tp[2:]).encode(), None) is None  # version ff is invalid
    assert client_trace_headers(tp.encode(), b"k=" + b"v" * 600) == {"traceparent": tp}


def test_provider_from_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.tracing_otel import build_provider

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = build_provider({"OTEL_TRACES_EXPORTER": "none"})
    assert provider.resource.attributes["service.name"] == "parrot-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw")
    provider = build_provider({"OTEL_TRACES_EXPORTER": "otlp"})  # connects to nothing yet
    assert provider.resource.attributes["service.name"] == "edge-gw"
    provider.shutdown()
    with pytest.raises(ValueError, match="http/protobuf"):
        build_provider({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ValueError, match="zipkin"):
        build_provider({"OTEL_TRACES_EXPORTER": "zipkin"})
