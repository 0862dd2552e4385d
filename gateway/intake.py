"""Background submits take turns at the door, so a latency-critical request is not
registered behind a whole DAG.

An application submits its DAG at once (73 async requests for a multi-agent app);
each costs the gateway ~3 ms of Python to validate and register, and asyncio runs
every handler round robin at each await, so a chat arriving with such a burst was
queued only when the burst was (measured, mixed-heavy at 0.9 of capacity: 190-900 ms
between a slow chat reaching the gateway and being queued; chat TTFT p99 0.56 s
against smg's 0.32 s). ``IntakeSlots`` lets at most ``slots`` background requests
(``X-Parrot-Criteria: throughput``) through each CPU-heavy step of their intake at
once: the handler of an async submit (``IntakeGate``: it answers as soon as the request
is registered) and, once its inputs are ready, the analysis and prompt hashing before
it is queued (``SessionRunner``). Everything else passes straight in. A slot is never
held while waiting for another request, so the gate cannot deadlock a DAG.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

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


class IntakeSlots:
    """``slots`` background requests in an intake step at once (0: no limit)."""

    def __init__(self, slots: int) -> None:
        self._sem = asyncio.Semaphore(slots) if slots > 0 else None

    def turn(self, background: bool) -> AbstractAsyncContextManager[Any]:
        """``async with`` this around a CPU-heavy step: waits for a slot if background."""
        return self._sem if background and self._sem is not None else nullcontext()


class IntakeGate:
    """ASGI middleware: background submits through the handler in ``slots`` turns."""

    def __init__(self, app: ASGIApp, slots: IntakeSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.slots.turn(scope["type"] == "http" and is_background_submit(scope)):
            await self.app(scope, receive, send)


__all__ = ["IntakeGate", "IntakeSlots", "is_background_submit"]
