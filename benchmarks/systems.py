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
  long-polls the final outputs and reads the session graph for timings.

``rtt_s`` is slept half before and half after every client-to-service call,
in every system (the paper's injected client network delay).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from .workloads import App, Step

SYSTEMS = ("baseline", "gateway-plain", "gateway", "sglang-router")


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class System(Protocol):
    name: str

    async def run_app(self, app: App) -> AppResult: ...


def _usage(body: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return usage.get("prompt_tokens"), details.get("cached_tokens"), usage.get("completion_tokens")


def chat_body(step: Step, model: str, tenant: str, values: dict[str, str] | None) -> dict[str, Any]:
    return {
        "model": model,
        "messages": step.messages(values),
        "max_tokens": step.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "user": tenant,
    }


class _Client:
    """Shared plumbing: one httpx client, the injected network delay."""

    def __init__(self, name: str, client: httpx.AsyncClient, model: str, rtt_s: float) -> None:
        self.name = name
        self.client = client
        self.model = model
        self.half_rtt = rtt_s / 2

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        if self.half_rtt:
            await asyncio.sleep(self.half_rtt)
        resp = await self.client.request(method, url, **kw)
        if self.half_rtt:
            await asyncio.sleep(self.half_rtt)
        return resp


class ClientOrchestrated(_Client):
    """Client-side DAG execution against one URL or round robin over several."""

    def __init__(self, name: str, client: httpx.AsyncClient, urls: list[str], model: str,
                 rtt_s: float = 0.0, engine_of_url: bool = True) -> None:
        super().__init__(name, client, model, rtt_s)
        self.urls = list(urls)
        self._rr = itertools.cycle(self.urls)
        self.engine_of_url = engine_of_url

    async def run_app(self, app: App, scheduled: float | None = None) -> AppResult:
        start = time.time()
        res = AppResult(app.instance, app.kind, app.tenant, scheduled or start, start, start,
                        app.output_tokens)
        values: dict[str, str] = {}
        done: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in app.steps}

        async def run_step(step: Step) -> None:
            for name in step.inputs:
                if name in done:
                    await done[name].wait()
            url = next(self._rr)
            body = chat_body(step, self.model, app.tenant, values)
            sent = time.time()
            resp = await self.call("POST", url + "/v1/chat/completions", json=body)
            received = time.time()
            if resp.status_code != 200:
                raise RuntimeError(f"{self.name} {step.name}: HTTP {resp.status_code} {resp.text[:200]}")
            data = resp.json()
            values[step.name] = data["choices"][0]["message"]["content"] or ""
            pt, ct, cpt = _usage(data)
            engine = url if self.engine_of_url else resp.headers.get("x-parrot-engine")
            res.requests.append(RequestTiming(app.instance, step.name, step.stage, sent, received,
                                              engine, pt, ct, cpt))
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


class GatewayDag(_Client):
    """Submit every step at once with semantic variables; long-poll the finals."""

    def __init__(self, name: str, client: httpx.AsyncClient, url: str, model: str,
                 rtt_s: float = 0.0, poll_wait_s: int = 30) -> None:
        super().__init__(name, client, model, rtt_s)
        self.url = url
        self.poll_wait_s = poll_wait_s

    async def _submit(self, sid: str, app: App, step: Step) -> float:
        headers = {
            "X-Parrot-Session": sid,
            "X-Parrot-Output": step.name,
            "X-Parrot-Async": "1",
            "X-Parrot-Criteria": step.criteria,
        }
        sent = time.time()
        resp = await self.call("POST", self.url + "/v1/chat/completions",
                               json=chat_body(step, self.model, app.tenant, None), headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"gateway submit {step.name}: HTTP {resp.status_code} {resp.text[:300]}")
        return sent

    async def _wait(self, sid: str, name: str) -> str:
        while True:
            resp = await self.call("GET", f"{self.url}/v1/sessions/{sid}/variables/{name}",
                                   params={"wait": self.poll_wait_s})
            if resp.status_code != 200:
                raise RuntimeError(f"gateway poll {name}: HTTP {resp.status_code} {resp.text[:300]}")
            data = resp.json()
            if data.get("status") == "ready":
                return str(data.get("value") or "")
            if data.get("status") == "failed":
                raise RuntimeError(f"gateway variable {name} failed: {data.get('error')}")

    async def run_app(self, app: App, scheduled: float | None = None) -> AppResult:
        sid = f"{app.instance}-{uuid.uuid4().hex[:8]}"
        start = time.time()
        res = AppResult(app.instance, app.kind, app.tenant, scheduled or start, start, start,
                        app.output_tokens)
        sent: dict[str, float] = {}
        try:
            times = await asyncio.gather(*(self._submit(sid, app, s) for s in app.steps))
            sent = {s.name: t for s, t in zip(app.steps, times)}
            await asyncio.gather(*(self._wait(sid, f) for f in app.finals))
        except Exception as exc:  # noqa: BLE001
            res.error = f"{type(exc).__name__}: {exc}"
        res.end = time.time()
        res.requests = await self._timings(sid, app, sent, res.end)
        try:
            await self.client.delete(f"{self.url}/v1/sessions/{sid}")
        except httpx.HTTPError:
            pass
        return res

    async def _timings(self, sid: str, app: App, sent: dict[str, float], end: float) -> list[RequestTiming]:
        """Per-request timings from the session graph (outside the measured span)."""
        try:
            graph = (await self.client.get(f"{self.url}/v1/sessions/{sid}")).json()
        except (httpx.HTTPError, ValueError):
            graph = {}
        out = []
        stages = {s.name: s.stage for s in app.steps}
        for r in graph.get("requests", []):
            name = r.get("output") or r.get("id")
            t0 = sent.get(name, end)
            queued, run = r.get("queued_ms"), r.get("run_ms")
            started = r.get("started_at")
            finished = r.get("finished_at")
            out.append(RequestTiming(
                app.instance, name, stages.get(name, ""), t0, finished or end,
                r.get("engine"), r.get("prompt_tokens"), r.get("cached_tokens"),
                r.get("completion_tokens"), started, finished, queued, run,
            ))
        return out


def make_system(name: str, client: httpx.AsyncClient, *, engines: list[str], gateway: str | None,
                router: str | None, model: str, rtt_s: float) -> System:
    if name == "baseline":
        return ClientOrchestrated(name, client, engines, model, rtt_s)
    if name == "gateway-plain":
        assert gateway
        return ClientOrchestrated(name, client, [gateway], model, rtt_s, engine_of_url=False)
    if name == "sglang-router":
        assert router
        return ClientOrchestrated(name, client, [router], model, rtt_s, engine_of_url=False)
    if name == "gateway":
        assert gateway
        return GatewayDag(name, client, gateway, model, rtt_s)
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
