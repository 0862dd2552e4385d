"""How each compared system runs one application instance.

* ``baseline``: the application orchestrates on the client, as a LangChain
  program would: every step waits (client-side) for its inputs, fills them
  in, and calls an engine directly; engines are used round robin. Steps whose
  inputs are ready run concurrently (asyncio), so the baseline is not
  handicapped by sequential code.
* ``gateway-plain`` / ``sglang-router``: the same client-side orchestration,
  sent through parrot-gateway without semantic headers, or through SGLang
  Model Gateway (``smg``, cache-aware policy).
* ``gateway``: the whole DAG is submitted at once with semantic variables
  (``X-Parrot-Async: 1``, ``{{name}}`` placeholders); the client then
  long-polls the final outputs. A streamed one-step app (a chat) is one
  synchronous streamed session request. Timings are read from the session
  graph after the run (``finish``), so the harness adds no load of its own
  to the system under test while it is measured.

``rtt_s`` is slept half before and half after every client-to-service call,
in every system (the paper's injected client network delay).

Every request records when its inputs were ready (``ready``: on the client; for
the gateway DAG, the app's start or, once the session graph is read, the
server-side finish of its inputs if later) and when it was handed to the HTTP
client (``issued``): ``send_lag_ms`` is the difference less the injected half
round trip, i.e. the harness's own delay. A DAG step submitted before its
inputs finished lost nothing, however late after the app's start it went out.
The HTTP client (``httpclient``) writes each request as one pre-formatted buffer
over a keep-alive pool, ~60 us per request whatever the number in flight; the
steps ready at an app's start are written back to back before anything else runs
(the 16 maps of an app leave within ~1 ms of its start); ``issued`` is the moment
its bytes are written.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from .agents import run_script
from .httpclient import AiohttpClient, HttpClient, HttpError, Response
from .variants import PLAIN_VARIANTS, VARIANTS
from .workloads import App, Step

Http = HttpClient | AiohttpClient

SYSTEMS = ("baseline", "gateway-plain", "gateway", "sglang-router", "gateway-2r", "gateway-plain-2r",
           "gateway-2r-session",
           *VARIANTS, *PLAIN_VARIANTS)
# gateway-2r / gateway-plain-2r: the same clients through two gateway replicas (one Redis)
# behind HAProxy round robin: what scale-out costs. gateway-2r-session: the same two replicas
# behind a balancer that sends a session's requests to one replica (hashing X-Parrot-Session).
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class RequestTiming:
    """One LLM call as the benchmark saw it. Times are wall ``time.time()`` seconds."""

    app: str
    step: str
    stage: str
    sent: float
    received: float
    engine: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    started: float | None = None
    """When the service dispatched it to an engine (gateway graph), if known."""
    finished: float | None = None
    queued_ms: float | None = None
    run_ms: float | None = None
    ready: float | None = None
    """When its inputs were ready on the client (the app's start for a root step)."""
    issued: float | None = None
    """When the request was handed to the HTTP client (after the injected delay)."""
    send_lag_ms: float | None = None
    """``issued - ready - rtt/2`` in wall ms: time the harness itself added."""
    first_token: float | None = None
    """Streamed requests: when the first content token arrived."""
    server_ready: float | None = None
    """Gateway DAG: when the gateway saw its inputs ready (the session graph's ``ready_at``)."""
    server_queued: float | None = None
    """Gateway DAG: when it was analysed and handed to the dispatcher (``queued_at``)."""


@dataclass
class AppResult:
    app: str
    kind: str
    tenant: str
    scheduled: float
    """Planned arrival (wall)."""
    start: float
    end: float
    output_tokens: int
    requests: list[RequestTiming] = field(default_factory=list)
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def start_lag(self) -> float:
        """Seconds the harness started the app after its planned arrival."""
        return max(0.0, self.start - self.scheduled)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class System(Protocol):
    name: str
    targets: list[str]

    async def run_app(self, app: App, scheduled: float | None = None) -> AppResult: ...

    async def finish(self) -> None: ...


def _usage(body: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return usage.get("prompt_tokens"), details.get("cached_tokens"), usage.get("completion_tokens")


def chat_body(step: Step, model: str, tenant: str, values: dict[str, str] | None) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": step.messages(values),
        "max_tokens": step.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "user": tenant,
    }
    if step.stream:
        body["stream"] = True
    return body


class StepFailed(RuntimeError):
    """The service answered a step with an error."""


@dataclass
class Reply:
    status: int
    data: dict[str, Any]
    headers: dict[str, str]
    first_token: float | None = None


class _Sse:
    """Consumes a server-sent event stream as it arrives: the text, the usage and
    when the first content token came (the arrival of its bytes)."""

    def __init__(self) -> None:
        self.buf = b""
        self.first: float | None = None
        self.parts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.raw = b""

    def feed(self, chunk: bytes) -> None:
        now = time.time()
        if len(self.raw) < 2048:
            self.raw += chunk
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if obj.get("error"):
                self.error = obj
            for choice in obj.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if self.first is None:
                        self.first = now
                    self.parts.append(text)
            self.usage = obj.get("usage") or self.usage

    def reply(self, resp: Response) -> Reply:
        if resp.status != 200 or self.error is not None:
            status = resp.status if resp.status != 200 else 500
            return Reply(status, self.error or _json(self.raw), resp.headers)
        data = {"choices": [{"message": {"content": "".join(self.parts)}}], "usage": self.usage or {}}
        return Reply(200, data, resp.headers, self.first)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"text": raw[:300].decode(errors="replace")}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


@dataclass
class _Sent:
    """A call sent by ``_Client.begin``: its response to await, its stream parser."""

    response: Awaitable[Response]
    sse: _Sse | None


class _Client:
    """Shared plumbing: one HTTP client, the injected network delay, the lag hook."""

    def __init__(self, name: str, http: Http, model: str, rtt_s: float) -> None:
        self.name = name
        self.http = http
        self.model = model
        self.half_rtt = rtt_s / 2

    targets: list[str] = []
    """The URLs this system's requests go to (their connections are opened before a run)."""

    def before_send(self) -> None:
        """Called just before every request; tests override it to slow the client down."""

    async def call(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                   params: dict[str, Any] | None = None, stream: bool = False) -> tuple[Reply, float]:
        """One client-to-service call; returns the reply and when its bytes were written."""
        if self.half_rtt:
            await asyncio.sleep(self.half_rtt)
        return await self.complete(self.begin(method, url, body, headers, params, stream))

    def begin(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              params: dict[str, Any] | None = None, stream: bool = False) -> _Sent:
        """Send a call now, without awaiting (the injected half round trip before it is
        the caller's): a burst leaves back to back. ``complete`` gives its reply."""
        self.before_send()
        data = None if body is None else orjson.dumps(body)
        hdrs = {**JSON_HEADERS, **(headers or {})} if data is not None else headers
        sse = _Sse() if stream else None
        return _Sent(self.http.begin(method, url, data, hdrs, params, sse.feed if sse else None), sse)

    async def complete(self, sent: _Sent) -> tuple[Reply, float]:
        """The reply to a ``begin``, after the injected half round trip back."""
        resp = await sent.response
        sse = sent.sse
        reply = sse.reply(resp) if sse is not None else Reply(resp.status, _json(resp.body), resp.headers)
        if self.half_rtt:
            await asyncio.sleep(self.half_rtt)
        return reply, resp.sent_at


class ClientOrchestrated(_Client):
    """Client-side DAG execution against one URL or round robin over several."""

    def __init__(self, name: str, http: Http, urls: list[str], model: str,
                 rtt_s: float = 0.0, engine_of_url: bool = True) -> None:
        super().__init__(name, http, model, rtt_s)
        self.urls = self.targets = list(urls)
        self._rr = itertools.cycle(self.urls)
        self.engine_of_url = engine_of_url

    async def run_app(self, app: App, scheduled: float | None = None) -> AppResult:
        if app.script is not None:
            return await self._run_script(app, scheduled)
        start = time.time()
        res = AppResult(app.instance, app.kind, app.tenant, scheduled or start, start, start,
                        app.output_tokens)
        values: dict[str, str] = {}
        arrived: dict[str, float] = {}
        done: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in app.steps}
        deps = {s.name: [n for n in s.inputs if n in done] for s in app.steps}
        # The steps ready at the start leave at once, back to back, before any task runs:
        # one task per step would send them one loop turn apart (~90 us each, so the 16th
        # map of an app left ~2.4 ms after its start; measured, map-reduce at capacity).
        first: dict[str, tuple[str, float, _Sent]] = {}
        if self.half_rtt:
            await asyncio.sleep(self.half_rtt)
        try:
            for step in app.steps:
                if not deps[step.name]:
                    url = next(self._rr)
                    body = chat_body(step, self.model, app.tenant, values)
                    first[step.name] = (url, time.time(), self.begin(
                        "POST", url + "/v1/chat/completions", body, stream=step.stream))
        except Exception as exc:  # noqa: BLE001 - reported per app, the run goes on
            # Await the steps already written, so that their connections go back to the pool.
            await asyncio.gather(*(c.response for _, _, c in first.values()), return_exceptions=True)
            res.error = f"{type(exc).__name__}: {exc}"
            res.end = time.time()
            return res

        async def run_step(step: Step) -> None:
            for name in deps[step.name]:
                await done[name].wait()
            ready = max((arrived[n] for n in deps[step.name]), default=start)
            if step.name in first:
                url, sent, call = first[step.name]
                reply, issued = await self.complete(call)
            else:
                url = next(self._rr)
                body = chat_body(step, self.model, app.tenant, values)
                sent = time.time()
                reply, issued = await self.call("POST", url + "/v1/chat/completions", body,
                                                stream=step.stream)
            received = time.time()
            if reply.status != 200:
                raise StepFailed(f"{self.name} {step.name}: HTTP {reply.status} {str(reply.data)[:200]}")
            values[step.name] = reply.data["choices"][0]["message"]["content"] or ""
            pt, ct, cpt = _usage(reply.data)
            engine = url if self.engine_of_url else reply.headers.get("x-parrot-engine")
            res.requests.append(RequestTiming(
                app.instance, step.name, step.stage, sent, received, engine, pt, ct, cpt,
                ready=ready, issued=issued, send_lag_ms=_lag_ms(issued, ready, self.half_rtt),
                first_token=reply.first_token))
            arrived[step.name] = received
            done[step.name].set()

        tasks = [asyncio.create_task(run_step(s)) for s in app.steps]
        try:
            await asyncio.gather(*tasks)
        except Exception as exc:  # noqa: BLE001 - reported per app, the run goes on
            for t in tasks:
                t.cancel()
            res.error = f"{type(exc).__name__}: {exc}"
        res.end = time.time()
        return res

    async def _run_script(self, app: App, scheduled: float | None) -> AppResult:
        """A program an unmodified client runs turn by turn (``agents``): each turn is
        sent once the previous answer arrived (its tool results appended at once)."""
        start = time.time()
        res = AppResult(app.instance, app.kind, app.tenant, scheduled or start, start, start,
                        app.output_tokens)
        ready = start

        async def call(body: dict[str, Any]) -> dict[str, Any]:
            nonlocal ready
            i = len(res.requests)
            url = next(self._rr)
            sent = time.time()
            reply, issued = await self.call("POST", url + "/v1/chat/completions", body)
            received = time.time()
            if reply.status != 200:
                raise StepFailed(f"{self.name} turn {i}: HTTP {reply.status} {str(reply.data)[:200]}")
            pt, ct, cpt = _usage(reply.data)
            engine = url if self.engine_of_url else reply.headers.get("x-parrot-engine")
            res.requests.append(RequestTiming(
                app.instance, f"t{i}", app.steps[i].stage, sent, received, engine, pt, ct, cpt,
                ready=ready, issued=issued, send_lag_ms=_lag_ms(issued, ready, self.half_rtt)))
            ready = received
            return reply.data

        try:
            await run_script(app.script, self.model, call)
        except Exception as exc:  # noqa: BLE001 - reported per app, the run goes on
            res.error = f"{type(exc).__name__}: {exc}"
        res.end = time.time()
        return res

    async def finish(self) -> None:
        return None


def _lag_ms(issued: float, ready: float, half_rtt: float) -> float:
    return round(max(0.0, issued - ready - half_rtt) * 1000, 3)


@dataclass
class _Pending:
    sid: str
    app: App
    result: AppResult
    submits: dict[str, RequestTiming]


class GatewayDag(_Client):
    """Submit every step at once with semantic variables; long-poll the finals."""

    def __init__(self, name: str, http: Http, url: str, model: str,
                 rtt_s: float = 0.0, poll_wait_s: int = 30) -> None:
        super().__init__(name, http, model, rtt_s)
        self.url = url
        self.targets = [url]
        self.poll_wait_s = poll_wait_s
        self._pending: list[_Pending] = []

    def _headers(self, sid: str, step: Step, is_async: bool) -> dict[str, str]:
        h = {"X-Parrot-Session": sid, "X-Parrot-Output": step.name, "X-Parrot-Criteria": step.criteria}
        if is_async:
            h["X-Parrot-Async"] = "1"
        return h

    async def _submit(self, sid: str, app: App, step: Step, start: float) -> RequestTiming:
        sent = time.time()
        reply, issued = await self.call("POST", self.url + "/v1/chat/completions",
                                        chat_body(step, self.model, app.tenant, None),
                                        headers=self._headers(sid, step, True))
        if reply.status != 200:
            raise StepFailed(f"gateway submit {step.name}: HTTP {reply.status} {str(reply.data)[:300]}")
        return RequestTiming(app.instance, step.name, step.stage, sent, time.time(), ready=start,
                             issued=issued, send_lag_ms=_lag_ms(issued, start, self.half_rtt))

    async def _wait(self, sid: str, name: str) -> str:
        while True:
            reply, _ = await self.call("GET", f"{self.url}/v1/sessions/{sid}/variables/{name}",
                                       params={"wait": self.poll_wait_s})
            if reply.status != 200:
                raise StepFailed(f"gateway poll {name}: HTTP {reply.status} {str(reply.data)[:300]}")
            if reply.data.get("status") == "ready":
                return str(reply.data.get("value") or "")
            if reply.data.get("status") == "failed":
                raise StepFailed(f"gateway variable {name} failed: {reply.data.get('error')}")

    async def _streamed(self, sid: str, app: App, step: Step, start: float) -> RequestTiming:
        """A one-step streamed app (chat): one synchronous streamed session request."""
        sent = time.time()
        reply, issued = await self.call("POST", self.url + "/v1/chat/completions",
                                        chat_body(step, self.model, app.tenant, None),
                                        headers=self._headers(sid, step, False), stream=True)
        if reply.status != 200:
            raise StepFailed(f"gateway stream {step.name}: HTTP {reply.status} {str(reply.data)[:300]}")
        return RequestTiming(app.instance, step.name, step.stage, sent, time.time(), ready=start,
                             issued=issued, send_lag_ms=_lag_ms(issued, start, self.half_rtt),
                             first_token=reply.first_token)

    async def run_app(self, app: App, scheduled: float | None = None) -> AppResult:
        if app.script is not None:
            # An unmodified client's program has no semantic-variable form (its prompts are
            # its transcript so far): it runs as it would through gateway-plain.
            plain = ClientOrchestrated(self.name, self.http, [self.url], self.model, 2 * self.half_rtt,
                                       engine_of_url=False)
            return await plain.run_app(app, scheduled)
        sid = f"{app.instance}-{uuid.uuid4().hex[:8]}"
        start = time.time()
        res = AppResult(app.instance, app.kind, app.tenant, scheduled or start, start, start,
                        app.output_tokens)
        submits: dict[str, RequestTiming] = {}
        try:
            if len(app.steps) == 1 and app.steps[0].stream:
                t = await self._streamed(sid, app, app.steps[0], start)
                submits[t.step] = t
            else:
                timings = await asyncio.gather(*(self._submit(sid, app, s, start) for s in app.steps))
                submits = {t.step: t for t in timings}
                await asyncio.gather(*(self._wait(sid, f) for f in app.finals))
        except Exception as exc:  # noqa: BLE001
            res.error = f"{type(exc).__name__}: {exc}"
        res.end = time.time()
        res.requests = list(submits.values())
        self._pending.append(_Pending(sid, app, res, submits))
        return res

    async def finish(self, concurrency: int = 8) -> None:
        """After the run: read each session's graph for service-side timings, then delete it."""
        pending, self._pending = self._pending, []
        sem = asyncio.Semaphore(concurrency)

        async def one(p: _Pending) -> None:
            async with sem:
                p.result.requests = await self._timings(p)
                try:
                    await self.http.request("DELETE", f"{self.url}/v1/sessions/{p.sid}")
                except HttpError:
                    pass

        await asyncio.gather(*(one(p) for p in pending))

    async def _timings(self, p: _Pending) -> list[RequestTiming]:
        try:
            r = await self.http.request("GET", f"{self.url}/v1/sessions/{p.sid}")
            graph = _json(r.body) if r.status == 200 else {}
        except HttpError:
            graph = {}
        out = []
        steps = {s.name: s for s in p.app.steps}
        done_at = {r.get("output"): r.get("finished_at") for r in graph.get("requests", [])}
        for r in graph.get("requests", []):
            name = r.get("output") or r.get("id")
            sub = p.submits.get(name)
            step = steps.get(name)
            finished = r.get("finished_at")
            ready = sub.ready if sub else None
            if ready is not None and step is not None:
                # Inputs ready (finished on the server) before the submit went out: the
                # client was late for this step; before: the submit did not delay it.
                ready = max([ready, *(done_at.get(i) or 0.0 for i in step.inputs)])
            lag = _lag_ms(sub.issued, ready, self.half_rtt) if sub and sub.issued and ready else None
            out.append(RequestTiming(
                p.app.instance, name, step.stage if step else "", sub.sent if sub else p.result.end,
                finished or p.result.end, r.get("engine"), r.get("prompt_tokens"), r.get("cached_tokens"),
                r.get("completion_tokens"), r.get("started_at"), finished, r.get("queued_ms"),
                r.get("run_ms"), ready=ready, issued=sub.issued if sub else None,
                send_lag_ms=lag, first_token=sub.first_token if sub else None,
                server_ready=r.get("ready_at"), server_queued=r.get("queued_at"),
            ))
        return out or list(p.submits.values())


def make_system(name: str, http: Http, *, engines: list[str], gateway: str | None,
                router: str | None, model: str, rtt_s: float, replicas: str | None = None,
                variants: dict[str, str] | None = None, replicas_by_session: str | None = None) -> System:
    if name == "baseline":
        return ClientOrchestrated(name, http, engines, model, rtt_s)
    if name == "gateway-plain":
        assert gateway
        return ClientOrchestrated(name, http, [gateway], model, rtt_s, engine_of_url=False)
    if name == "sglang-router":
        assert router
        return ClientOrchestrated(name, http, [router], model, rtt_s, engine_of_url=False)
    if name == "gateway":
        assert gateway
        return GatewayDag(name, http, url=gateway, model=model, rtt_s=rtt_s)
    if name == "gateway-2r":
        assert replicas
        return GatewayDag(name, http, url=replicas, model=model, rtt_s=rtt_s)
    if name == "gateway-2r-session":
        assert replicas_by_session
        return GatewayDag(name, http, url=replicas_by_session, model=model, rtt_s=rtt_s)
    if name in PLAIN_VARIANTS:  # read at call time: the CLI may have registered more
        assert variants and name in variants
        return ClientOrchestrated(name, http, [variants[name]], model, rtt_s, engine_of_url=False)
    if name == "gateway-plain-2r":
        assert replicas
        return ClientOrchestrated(name, http, [replicas], model, rtt_s, engine_of_url=False)
    if name in VARIANTS:
        assert variants and name in variants
        return GatewayDag(name, http, url=variants[name], model=model, rtt_s=rtt_s)
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
