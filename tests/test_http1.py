"""backends/http1.py, the engine calls' HTTP client, against a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backends.http1 import ConnectFailed, HttpClient, HttpError, ReadTimeout
from common.serving import UvicornThread, free_port

pytestmark = pytest.mark.timeout(60)

SEEN: list[str] = []


async def echo(request: Request) -> Response:
    body = await request.body()
    SEEN.append(request.headers.get("x-test", ""))
    return JSONResponse({"len": len(body), "ct": request.headers.get("content-type")}, status_code=201)


async def sse(request: Request) -> Response:
    n = int(request.query_params.get("n", "3"))
    delay = float(request.query_params.get("delay", "0"))

    async def gen() -> AsyncIterator[bytes]:
        for i in range(n):
            await asyncio.sleep(delay)
            yield f"data: {i}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return JSONResponse({"late": True})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/sse", sse),
                            Route("/slow", slow)])
    with UvicornThread(app) as t:
        yield t.url


def test_request_reuses_connections_and_reads_whole_answers(server: str) -> None:
    async def main() -> None:
        c = HttpClient()
        try:
            for i in range(5):
                r = await c.request("POST", server + "/echo", b"x" * i * 100,
                                    {"Content-Type": "application/json", "X-Test": str(i)})
                assert r.status == 201 and r.body == b'{"len":%d,"ct":"application/json"}' % (i * 100)
                assert r.headers["content-type"] == "application/json"
            assert len(c._all) == 1  # one keep-alive connection served all five
        finally:
            await c.close()

    asyncio.run(main())
    assert SEEN[-5:] == ["0", "1", "2", "3", "4"]


def test_stream_hands_over_chunks_as_they_arrive(server: str) -> None:
    async def main() -> list[bytes]:
        c = HttpClient()
        try:
            status, head, chunks = await c.stream("GET", server + "/sse?n=4&delay=0.02")
            assert status == 200 and head["content-type"].startswith("text/event-stream")
            out = [x async for x in chunks]
            # the connection went back to the pool after a clean end
            r = await c.request("POST", server + "/echo", b"{}")
            assert r.status == 201 and len(c._all) == 1
            return out
        finally:
            await c.close()

    body = b"".join(asyncio.run(main()))
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: [DONE]\n\n"


def test_leaving_a_stream_early_closes_its_connection(server: str) -> None:
    async def main() -> None:
        c = HttpClient()
        try:
            _, _, chunks = await c.stream("GET", server + "/sse?n=50&delay=0.01")
            async for _ in chunks:
                break
            await chunks.aclose()  # type: ignore[attr-defined]
            assert not c._all
        finally:
            await c.close()

    asyncio.run(main())


def test_connect_refused_and_read_timeouts_are_told_apart(server: str) -> None:
    async def main() -> None:
        c = HttpClient(connect_timeout=1.0, read_timeout=0.2)
        try:
            with pytest.raises(ConnectFailed):
                await c.request("GET", f"http://127.0.0.1:{free_port()}/x")
            with pytest.raises(ReadTimeout):
                await c.request("GET", server + "/slow?s=1")
            assert issubclass(ReadTimeout, HttpError) and issubclass(ConnectFailed, HttpError)
            _, _, chunks = await c.stream("GET", server + "/sse?n=3&delay=0.5")
            with pytest.raises(ReadTimeout):
                async for _ in chunks:
                    pass
            r = await c.request("GET", server + "/slow?s=0.05", timeout=2.0)  # per call
            assert r.status == 200
        finally:
            await c.close()

    asyncio.run(main())


def test_a_server_that_closes_at_once_fails_fast_instead_of_hanging() -> None:
    async def main() -> None:
        async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        srv = await asyncio.start_server(slam, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = HttpClient(read_timeout=30)
        try:
            for _ in range(3):
                with pytest.raises(HttpError):
                    await asyncio.wait_for(c.request("POST", f"http://127.0.0.1:{port}/x", b"{}"), 5)
        finally:
            await c.close()
            srv.close()

    asyncio.run(main())


def test_a_reader_cancelled_as_a_chunk_lands_stops(server: str) -> None:
    """Before Python 3.12, asyncio.wait_for swallows a cancellation that arrives in the
    tick its inner future completes: a stream reader cancelled as a chunk came in read on,
    and the engine kept generating for nobody. Here a chunk lands and the reader is
    cancelled in one tick: it must stop, and its connection close."""

    async def main() -> None:
        c = HttpClient()
        try:
            _, _, chunks = await c.stream("GET", server + "/sse?n=2&delay=5")  # silent 5 s
            got: list[bytes] = []

            async def read() -> None:
                async for chunk in chunks:
                    got.append(chunk)

            reader = asyncio.ensure_future(read())
            await asyncio.sleep(0.05)  # the reader waits for the first chunk
            (conn,) = c._all
            conn.data_received(b"6\r\ninject\r\n")  # a chunk arrives ...
            reader.cancel()  # ... and the reader is cancelled, in the same tick
            done, _ = await asyncio.wait((reader,), timeout=2)
            assert done and reader.cancelled(), "the cancelled reader read on"
            assert not c._all  # its connection was closed
        finally:
            await c.close()

    asyncio.run(main())
