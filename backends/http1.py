"""A lean HTTP/1.1 client over asyncio protocols, responses parsed by ``httptools``.

The gateway makes one engine call per request, so the client's own cost is paid
on every request: aiohttp spends ~150 us of Python per call before the bytes
leave and again on the way back; this client formats the request as one
``bytes`` write and lets the C parser (the one uvicorn uses) cut the answer.
It does what engine calls need and no more: keep-alive pools per host, a body
read whole or handed over chunk by chunk as it arrives (streams), a connect
timeout and a read timeout between chunks, and clear errors:

    HttpError           the connection failed or closed before the answer ended
    ├── ConnectFailed   no connection could be made (refused, unreachable, timeout)
    └── ReadTimeout     no bytes for ``read_timeout`` seconds

A request on a pooled connection that the server had already closed is sent
again once on a fresh one (nothing was processed); idle connections are
dropped after ``keepalive_s``, below uvicorn's 5 s, so that race is rare.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httptools

Chunk = Callable[[bytes], None]


class HttpError(ConnectionError):
    """The connection failed or closed before a whole response arrived."""


class ConnectFailed(HttpError):
    """No connection could be made: nothing listens there, or no route to it."""


class ReadTimeout(HttpError, TimeoutError):
    """No bytes arrived for the read timeout."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes


@lru_cache(maxsize=256)
def split_url(url: str) -> tuple[str, int, str, bytes]:
    """(host, port, path with query, ``host:port`` bytes) of an ``http://`` URL."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, port, path, f"{u.hostname}:{port}".encode()


def format_request(method: str, url: str, body: bytes | None,
                   headers: dict[str, str] | None) -> tuple[str, int, bytes]:
    host, port, path, hostport = split_url(url)
    head = [f"{method} {path} HTTP/1.1\r\nHost: ".encode(), hostport, b"\r\n"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}\r\n".encode())
    if body is not None:
        head.append(b"Content-Length: %d\r\n" % len(body))
    return host, port, b"".join(head) + b"\r\n" + (body or b"")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[tuple[int, dict[str, str]]] | None = None
        self.done: asyncio.Future[bytes] | None = None
        self.on_chunk: Chunk | None = None
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.got_bytes = False
        self.last_read = time.monotonic()
        self.closed = False
        self.keep = True
        self.idle_since = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_read = time.monotonic()
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

    def on_headers_complete(self) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_result((self.parser.get_status_code(), self.headers))

    def on_body(self, body: bytes) -> None:
        if self.on_chunk is not None:
            self.on_chunk(body)
        else:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result(b"".join(self.parts))

    # ours
    def _fail(self, exc: Exception) -> None:
        for f in (self.head, self.done):
            if f is not None and not f.done():
                f.set_exception(exc)
                f.exception()  # retrieved: a stream that stopped reading must not warn

    def send(self, data: bytes, on_chunk: Chunk | None) -> None:
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            # Lost before this request (e.g. the server died between connect and send):
            # connection_lost has already fired, so nothing would ever answer these futures.
            raise HttpError("connection closed before the request was sent")
        loop = asyncio.get_running_loop()
        self.head, self.done = loop.create_future(), loop.create_future()
        self.on_chunk, self.headers, self.parts, self.got_bytes = on_chunk, {}, [], False
        self.last_read = time.monotonic()
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Keep-alive pools per host. ``request`` reads a whole answer; ``stream`` hands
    over the status and headers, then the body as it arrives."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 600.0,
                 keepalive_s: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._all: set[_Conn] = set()

    async def _checkout(self, host: str, port: int) -> tuple[_Conn, bool]:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            c = idle.pop()
            if not c.closed and now - c.idle_since < self.keepalive_s:
                return c, True
            self._drop(c)
        try:
            _, c = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(_Conn, host, port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc!r}") from exc
        self._all.add(c)
        return c, False

    def _drop(self, c: _Conn) -> None:
        c.close()
        self._all.discard(c)

    def _checkin(self, host: str, port: int, c: _Conn) -> None:
        if c.keep and not c.closed:
            c.idle_since = time.monotonic()
            c.on_chunk = None
            self._idle.setdefault((host, port), []).append(c)
        else:
            self._drop(c)

    async def _wait(self, c: _Conn, fut: asyncio.Future[Any], timeout: float | None) -> Any:
        """Await ``fut`` while bytes keep coming; ReadTimeout after ``timeout`` of silence."""
        limit = self.read_timeout if timeout is None else timeout
        while True:
            left = c.last_read + limit - time.monotonic()
            if left <= 0:
                raise ReadTimeout(f"no answer for {limit:g} s")
            # asyncio.wait, not wait_for: before 3.12 wait_for swallows a cancellation
            # that lands as ``fut`` completes, and the cancelled caller reads on.
            await asyncio.wait((fut,), timeout=left)
            if fut.done():
                return fut.result()
            # timed out: bytes may have come meanwhile, re-check the silence

    async def _send(self, method: str, url: str, body: bytes | None,
                    headers: dict[str, str] | None, on_chunk: Chunk | None,
                    timeout: float | None) -> tuple[str, int, _Conn, int, dict[str, str]]:
        host, port, data = format_request(method, url, body, headers)
        for attempt in (0, 1):
            c, reused = await self._checkout(host, port)
            sent = False
            try:
                c.send(data, on_chunk)  # HttpError at once if it closed meanwhile: nothing sent
                sent = True
                status, head = await self._wait(c, c.head, timeout)  # type: ignore[arg-type]
                return host, port, c, status, head
            except HttpError:
                self._drop(c)
                # Nothing reached a server that could have processed it: not sent at all,
                # or sent on a pooled connection the server had just closed. Resend once
                # (a fresh connection fails with ConnectFailed if nothing listens now).
                if attempt == 0 and (not sent or (reused and not c.got_bytes)):
                    continue
                raise
            except BaseException:
                self._drop(c)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(self, method: str, url: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Response:
        """One request, its answer read whole. ``timeout``: read timeout for this call."""
        host, port, c, status, head = await self._send(method, url, body, headers, None, timeout)
        try:
            data = await self._wait(c, c.done, timeout)  # type: ignore[arg-type]
        except BaseException:
            self._drop(c)
            raise
        self._checkin(host, port, c)
        return Response(status, head, data)

    async def stream(self, method: str, url: str, body: bytes | None = None,
                     headers: dict[str, str] | None = None,
                     ) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        """Status, headers and the body's chunks as they arrive (``read_timeout`` of
        silence ends it with ReadTimeout). Leaving the iteration early, or cancelling,
        closes the connection, which tells the server to stop."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        host, port, c, status, head = await self._send(method, url, body, headers,
                                                        queue.put_nowait, None)
        done = c.done
        assert done is not None
        done.add_done_callback(lambda _f: queue.put_nowait(None))  # end (or failure) of the body

        async def chunks() -> AsyncIterator[bytes]:
            clean = False
            try:
                while True:
                    if queue.empty():  # (asyncio.wait: see _wait)
                        getter = asyncio.ensure_future(queue.get())
                        try:
                            got, _ = await asyncio.wait((getter,), timeout=self.read_timeout)
                        finally:
                            if not getter.done():
                                getter.cancel()
                        if not got:
                            raise ReadTimeout(f"no bytes for {self.read_timeout:g} s")
                        item = getter.result()
                    else:
                        item = queue.get_nowait()
                    if item is None:
                        done.result()  # raises HttpError if the connection broke
                        clean = True
                        return
                    yield item
            finally:
                if clean:
                    self._checkin(host, port, c)
                else:
                    self._drop(c)

        return status, head, chunks()

    async def close(self) -> None:
        for c in list(self._all):
            c.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close
