"""The load generator's lean HTTP client against a real uvicorn server (the simulated
engine): JSON and streamed bodies, query strings, keep-alive reuse, connections the
server closed, errors, and the same answers as the aiohttp adapter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson
import pytest

from backends.sim.app import create_sim_app
from backends.sim.config import SimConfig
from benchmarks.httpclient import AiohttpClient, HttpClient, HttpError
from benchmarks.systems import ClientOrchestrated, _Sse
from benchmarks.workloads import map_reduce_app
from common.serving import UvicornThread, free_port

BODY = {"model": "default", "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine() -> Iterator[UvicornThread]:
    server = UvicornThread(create_sim_app(SimConfig(time_scale=0.02)), timeout_keep_alive=1).start()
    yield server
    server.stop()


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.mark.parametrize("kind", ["lean", "aiohttp"])
def test_json_stream_and_query(engine: UvicornThread, kind: str) -> None:
    async def go() -> None:
        http = HttpClient() if kind == "lean" else AiohttpClient()
        async with http:
            r = await http.request("POST", engine.url + "/v1/chat/completions", orjson.dumps(BODY),
                                   {"Content-Type": "application/json"})
            assert r.status == 200 and r.sent_at > 0
            data = orjson.loads(r.body)
            assert data["usage"]["completion_tokens"] == 12 and r.headers["content-type"].startswith(
                "application/json")
            sse = _Sse()
            r = await http.request("POST", engine.url + "/v1/chat/completions",
                                   orjson.dumps({**BODY, "stream": True}),
                                   {"Content-Type": "application/json"}, on_chunk=sse.feed)
            reply = sse.reply(r)
            assert reply.status == 200 and reply.first_token is not None and reply.first_token >= r.sent_at
            assert reply.data["choices"][0]["message"]["content"] == data["choices"][0]["message"]["content"]
            r = await http.request("GET", engine.url + "/v1/models", params={"x": "a b"})
            assert r.status == 200 and orjson.loads(r.body)["data"]
            r = await http.request("POST", engine.url + "/v1/chat/completions", b"{not json",
                                   {"Content-Type": "application/json"})
            assert 400 <= r.status < 500 and orjson.loads(r.body)["error"]

    _run(go())


def test_keep_alive_reuse_and_server_closed_connections(engine: UvicornThread) -> None:
    async def go() -> None:
        async with HttpClient(keepalive_s=60, spare=0) as http:
            await asyncio.gather(*(http.request("GET", engine.url + "/health") for _ in range(8)))
            assert len(http._all) == 8
            for _ in range(5):
                assert (await http.request("GET", engine.url + "/health")).status == 200
            assert len(http._all) == 8  # sequential requests reuse one pooled connection
            await asyncio.sleep(1.5)  # uvicorn (timeout_keep_alive=1) closes the idle ones
            assert (await http.request("GET", engine.url + "/health")).status == 200
            assert len(http._all) == 1
        async with HttpClient(keepalive_s=0.0, spare=0) as http:  # our own expiry: never reuse
            for _ in range(3):
                await http.request("GET", engine.url + "/health")
            assert len(http._all) == 1

    _run(go())


async def _settle(http: HttpClient) -> None:
    for _ in range(200):  # the spares open in the background
        if not http._tasks:
            return
        await asyncio.sleep(0.01)


def test_an_empty_pool_opens_spares_for_the_next_burst(engine: UvicornThread) -> None:
    async def go() -> None:
        async with HttpClient(keepalive_s=60, spare=6) as http:
            assert (await http.request("GET", engine.url + "/health")).status == 200
            await _settle(http)
            assert len(http._all) == 7 and http.opened_inline == 1
            await asyncio.gather(*(http.request("GET", engine.url + "/health") for _ in range(7)))
            assert http.opened_inline == 1  # the burst found its connections open
        async with HttpClient(keepalive_s=60, spare=0) as http:
            await http.warm(engine.url, 70)
            await http.warm(engine.url, 70)  # already there: nothing more opened
            assert len(http._all) == 70
            await asyncio.gather(*(http.request("GET", engine.url + "/health") for _ in range(70)))
            assert len(http._all) == 70

    _run(go())


def test_a_draining_pool_is_topped_up_before_it_is_empty(engine: UvicornThread) -> None:
    """Each burst leaves fewer than ``spare`` idle connections while in flight, so the pool
    is refilled between bursts and the next, larger one finds its connections open (a
    refill only once the pool is empty made the second burst open 2 inline)."""
    async def go() -> None:
        async with HttpClient(keepalive_s=60, spare=4) as http:
            await http.warm(engine.url, 8)
            for burst in (6, 10, 14):
                await asyncio.gather(*(http.request("GET", engine.url + "/health") for _ in range(burst)))
                await _settle(http)
            assert http.opened_inline == 0

    _run(go())


def test_errors_are_raised_not_hung() -> None:
    async def go() -> None:
        async with HttpClient(timeout_s=5) as http:
            with pytest.raises(OSError):
                await http.request("GET", f"http://127.0.0.1:{free_port()}/health")
            with pytest.raises(ValueError):
                await http.request("GET", "https://example.invalid/")

    _run(go())
    assert issubclass(HttpError, OSError)


def test_an_apps_ready_steps_leave_back_to_back(engine: UvicornThread) -> None:
    """The client-side orchestrator writes every step that is ready at an app's start
    before the event loop runs anything else (one task per step sent them a loop turn
    apart, ~90 us each), and still sends the step that waits for them once they are done."""
    async def go() -> None:
        loop = asyncio.get_running_loop()
        async with HttpClient(keepalive_s=60, spare=0) as http:
            await http.warm(engine.url, 20)
            client = ClientOrchestrated("baseline", http, [engine.url], "default")
            app = map_reduce_app("mr-0", seed=1, chunks=16, chunk_tokens=40, out=4)
            other: list[float] = []
            loop.call_soon(lambda: other.append(time.time()))
            res = await client.run_app(app)
            assert res.error is None and len(res.requests) == 17
            maps = [r for r in res.requests if r.step != "reduce"]
            assert len(maps) == 16 and all(r.issued is not None and r.issued < other[0] for r in maps)
            reduce = next(r for r in res.requests if r.step == "reduce")
            assert reduce.issued is not None and reduce.issued >= max(r.received for r in maps)

    _run(go())


def test_an_app_whose_send_fails_is_reported_not_raised(engine: UvicornThread) -> None:
    """A step that cannot even be sent fails its app (the run goes on); the steps already
    written are awaited, so their connections go back to the pool."""
    async def go() -> None:
        async with HttpClient(keepalive_s=60, spare=0) as http:
            await http.warm(engine.url, 4)
            client = ClientOrchestrated("baseline", http, [engine.url], "default")
            sends = 0

            def before_send() -> None:
                nonlocal sends
                sends += 1
                if sends == 3:
                    raise RuntimeError("cannot send")

            client.before_send = before_send  # type: ignore[method-assign]
            res = await client.run_app(map_reduce_app("mr-1", seed=2, chunks=4, chunk_tokens=20, out=2))
            assert res.error is not None and "cannot send" in res.error
            assert len(http._idle[next(iter(http._idle))]) == 4  # both sent ones came back

    _run(go())
