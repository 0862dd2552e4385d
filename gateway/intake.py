"""Background submits take turns at the door, so a latency-critical request is not
registered behind a whole DAG.

An application submits its DAG at once (73 async requests for a multi-agent app);
each costs the gateway ~3 ms of Python to validate and register, and asyncio runs
every handler round robin at each await, so a chat arriving with such a burst was
queued only when the burst was (measured, mixed-heavy at 0.9 of capacity: 190-900 ms
between a slow chat reaching the gateway and being queued; chat TTFT p99 0.56 s
against smg's 0.32 s). ``IntakeGate`` lets at most ``slots`` background submits
(``X-Parrot-Async`` without ``X-Parrot-Criteria: latency``) through the handler at
once; everything else passes straight in. An async submit answers as soon as it is
registered, so a slot is held for its intake only.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

_TRUE = (b"1", b"true", b"yes")


def is_background_submit(scope: Scope) -> bool:
    """An async, not latency-critical request (header values as SPEC section 3 reads them)."""
    if scope.get("method") != "POST":
        return False
    is_async, throughput = False, False  # X-Parrot-Criteria defaults to latency
    for k, v in scope.get("headers", ()):
        if k == b"x-parrot-async":
            is_async = v.strip().lower() in _TRUE
        elif k == b"x-parrot-criteria":
            throughput = v.strip().lower() == b"throughput"
    return is_async and throughput


class IntakeGate:
    """ASGI middleware: background submits through ``slots`` at a time (0: no gate)."""

    def __init__(self, app: ASGIApp, slots: int) -> None:
        self.app = app
        self._slots = asyncio.Semaphore(slots) if slots > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._slots is None or scope["type"] != "http" or not is_background_submit(scope):
            await self.app(scope, receive, send)
            return
        async with self._slots:
            await self.app(scope, receive, send)


__all__ = ["IntakeGate", "is_background_submit"]
