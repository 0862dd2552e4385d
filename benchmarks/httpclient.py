"""The load generator's HTTP/1.1 client: a keep-alive pool over asyncio protocols,
responses parsed by ``httptools`` (the C parser uvicorn uses).

Why not aiohttp or httpx: a benchmark client must send a burst (16 maps of an app,
73 submits of a DAG) without delaying its own requests. aiohttp spends ~150 us of
Python per request before the bytes leave (httpx more), so the 16th map of a burst
left ~2.4 ms after the first on an idle core; this client spends ~60 us, a third
of it in the kernel's loopback send (the request is one pre-formatted ``bytes``
write, made at once by ``begin`` when an idle connection is at hand; measured
against an in-process sink, 6 KB bodies). It does only what the harness needs:
methods with a body or query, JSON in and out, and streamed bodies handed to a
callback as they arrive (their arrival time is what time-to-first-token measures).

``AiohttpClient`` offers the same ``request`` over aiohttp, to cross-check
(``bench --http-client aiohttp``). Not named ``http`` so as not to shadow the
standard library's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools

Chunk = Callable[[bytes], None]


class HttpError(ConnectionError):
    """The connection failed or closed before a whole response arrived."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes
    sent_at: float = 0.0
    """When the request's bytes were written (``time.time()``)."""


@lru_cache(maxsize=256)
def _split(url: str) -> tuple[str, int, str, bytes]:
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, port, path, f"{u.hostname}:{port}".encode()


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.on_chunk: Chunk | None = None
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.got_bytes = False
        self.closed = False
        self.keep = True
        self.idle_since = time.monotonic()
        self.sent_at = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection closed before the response ended ({exc or 'EOF'})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.on_chunk is not None:
            self.on_chunk(body)
        else:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(Response(self.parser.get_status_code(), self.headers, b"".join(self.parts),
                                  self.sent_at))

    # ours
    def _fail(self, exc: Exception) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    def send(self, data: bytes, on_chunk: Chunk | None) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.on_chunk, self.headers, self.parts, self.got_bytes = on_chunk, {}, [], False
        self.sent_at = time.time()
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Keep-alive pool per host. Idle connections are kept ``keepalive_s``; the servers the
    bench starts keep theirs longer (the gateway and the simulated engines 75 s), and a
    pooled connection the server closed meanwhile is noticed (its FIN closes it here) or,
    if it closed just as the request left, resent once on a fresh one.

    A connection that must be opened costs the burst that needs it: the connect completes
    only once the event loop has run the burst's other sends, so the last map of an app
    that found the pool empty left ~5-13 ms late (measured, map-reduce). So a checkout
    that leaves fewer than ``spare`` idle connections to its host opens ``spare`` more in
    the background, ready for the next burst: waiting until the pool is empty made the
    burst that emptied it open its own (past capacity, with more requests in flight than
    the connections opened before the run, map bursts left 6-7 ms late).
    ``opened_inline`` counts the requests that had to open their connection."""

    def __init__(self, keepalive_s: float = 60.0, timeout_s: float = 900.0, spare: int = 32) -> None:
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.spare = spare
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._all: set[_Conn] = set()
        self._refilling: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.opened_inline = 0

    async def _open(self, host: str, port: int) -> _Conn:
        _, c = await asyncio.get_running_loop().create_connection(_Conn, host, port)
        self._all.add(c)
        return c

    async def _park(self, key: tuple[str, int], n: int) -> None:
        """Open ``n`` connections to ``key`` and put them in its idle pool, behind the
        warmer ones (64 at a time: within any server's accept backlog)."""
        idle = self._idle.setdefault(key, [])
        while n > 0:
            batch = min(64, n)
            conns = await asyncio.gather(*(self._open(*key) for _ in range(batch)))
            now = time.monotonic()
            for c in conns:
                c.idle_since = now
                idle.insert(0, c)
            n -= batch

    async def _refill(self, key: tuple[str, int]) -> None:
        try:
            await self._park(key, self.spare)
        except OSError:
            pass  # the server is gone: the next request says so
        finally:
            self._refilling.discard(key)

    async def warm(self, url: str, n: int) -> None:
        """Have ``n`` idle connections to ``url``'s host open (before a measured run)."""
        host, port, _, _ = _split(url)
        idle = self._idle.get((host, port), [])
        await self._park((host, port), n - sum(1 for c in idle if not c.closed))

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        """An idle pooled connection to ``key``, without waiting; and a background
        top-up when fewer than ``spare`` would be left."""
        idle = self._idle.get(key)
        now = time.monotonic()
        found = None
        while idle:
            c = idle.pop()
            if not c.closed and now - c.idle_since < self.keepalive_s:
                found = c
                break
            c.close()
            self._all.discard(c)
        if self.spare and len(idle or ()) < self.spare and key not in self._refilling:
            self._refilling.add(key)
            task = asyncio.create_task(self._refill(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return found

    async def _checkout(self, key: tuple[str, int]) -> tuple[_Conn, bool]:
        found = self._take_idle(key)
        if found is not None:
            return found, True
        self.opened_inline += 1
        return await self._open(*key), False

    def begin(self, method: str, url: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              on_chunk: Chunk | None = None) -> Awaitable[Response]:
        """Write the request now when an idle connection to its host is at hand (no
        await, so a burst of requests leaves in one go, before anything else runs);
        awaiting the result gives the response (opening a connection first if none was
        idle). With ``on_chunk`` the body is handed over as it arrives."""
        host, port, path, hostport = _split(url)
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        head = [f"{method} {path} HTTP/1.1\r\nHost: ".encode(), hostport, b"\r\n"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}\r\n".encode())
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        data = b"".join(head) + b"\r\n" + (body or b"")
        key = (host, port)
        conn = self._take_idle(key)
        written = None if conn is None else (conn, conn.send(data, on_chunk))
        return self._finish(key, data, on_chunk, written)

    async def request(self, method: str, url: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                      on_chunk: Chunk | None = None) -> Response:
        """Send one request; with ``on_chunk`` the body is handed over as it arrives."""
        return await self.begin(method, url, body, headers, params, on_chunk)

    async def _finish(self, key: tuple[str, int], data: bytes, on_chunk: Chunk | None,
                      written: tuple[_Conn, asyncio.Future[Response]] | None) -> Response:
        for attempt in (0, 1):
            if written is not None and attempt == 0:
                (conn, waiter), reused = written, True
            else:
                conn, reused = await self._checkout(key)
                waiter = conn.send(data, on_chunk)
            try:
                resp = await asyncio.wait_for(waiter, self.timeout_s)
            except HttpError:
                conn.close()
                self._all.discard(conn)
                # A pooled connection the server had closed: nothing was processed, resend once.
                if reused and not conn.got_bytes and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                self._all.discard(conn)
                raise
            if conn.keep and not conn.closed:
                conn.idle_since = time.monotonic()
                conn.on_chunk = None
                self._idle.setdefault(key, []).append(conn)
            else:
                conn.close()
                self._all.discard(conn)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for c in list(self._all):
            c.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AiohttpClient:
    """The same ``request`` over aiohttp (no pool limit, 3 s keep-alive)."""

    def __init__(self, timeout_s: float = 900.0) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout_s),
            skip_auto_headers=("User-Agent",),
        )

    async def warm(self, url: str, n: int) -> None:
        """Nothing: aiohttp opens its connections as requests need them."""

    def begin(self, method: str, url: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
              on_chunk: Chunk | None = None) -> Awaitable[Response]:
        """As ``HttpClient.begin``, except that the request leaves only once awaited."""
        return self.request(method, url, body, headers, params, on_chunk)

    async def request(self, method: str, url: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
                      on_chunk: Chunk | None = None) -> Response:
        sent = time.time()
        try:
            async with self.session.request(method, url, data=body, headers=headers, params=params) as r:
                hdrs = {k.lower(): v for k, v in r.headers.items()}
                if on_chunk is None:
                    return Response(r.status, hdrs, await r.read(), sent)
                async for chunk in r.content.iter_any():
                    on_chunk(chunk)
                return Response(r.status, hdrs, b"", sent)
        except self._aiohttp.ClientError as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> AiohttpClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def make_client(kind: str = "lean") -> HttpClient | AiohttpClient:
    if kind == "lean":
        return HttpClient()
    if kind == "aiohttp":
        return AiohttpClient()
    raise ValueError(f"unknown HTTP client {kind!r}; known: lean, aiohttp")
