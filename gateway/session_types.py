"""The plain data of running semantic requests (what a submission, a registered run and
its ready inputs are) and the small helpers around them: retrying a store operation
through an outage, reading choice 0's text from an answer or a chunk. No I/O of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common.errors import ServiceUnavailable
from common.types import JSON, Route

from .completion import RequestContext
from .notifier import Waiter
from .store import RequestRecord, Variable

STORE_RETRY_S = 30.0  # how long a finished request retries saving its result
T = TypeVar("T")


@dataclass(frozen=True)
class Submission:
    """One semantic request as the runner takes it, whoever received it."""

    tenant: str
    session: str
    route: Route
    body: JSON
    request_id: str
    output: str | None = None
    criteria: str = "latency"
    timeout_s: float = 600.0
    weight: float = 1.0
    on_usage: Callable[[Any], Any] | None = None  # the engine's usage, once known (limits)


@dataclass(frozen=True)
class Inputs:
    """A request's input values once ready, the session's graph version read with them
    (None: not read) and when the last of them was written (epoch s)."""

    values: dict[str, str]
    version: int | None
    written_at: float | None


@dataclass
class Run:
    """A registered request and what running it needs."""

    rec: RequestRecord
    route: Route
    body: JSON
    ctx: RequestContext
    deadline: float  # absolute epoch time: the session deadline of this request
    # Opened before registration, which read the inputs' states (`initial`): the first
    # wait needs no read of its own. Closed by the first wait.
    waiter: Waiter | None = None
    initial: tuple[dict[str, Variable], int] | None = None


async def persist(write: Callable[[], Awaitable[T]], within_s: float = STORE_RETRY_S) -> T:
    """Run a store operation, retrying while Redis is unreachable (a restart, a failover):
    a result computed by an engine is not thrown away, and accepted work does not fail,
    for a short outage."""
    deadline = time.monotonic() + within_s
    delay = 0.05
    while True:
        try:
            return await write()
        except ServiceUnavailable:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def choice_text(route: Route, body: JSON) -> str:
    choices = body.get("choices") or []
    if not choices:
        return ""
    c0 = choices[0]
    if route == "chat":
        return str((c0.get("message") or {}).get("content") or "")
    return str(c0.get("text") or "")


def chunk_text(route: Route, chunk: JSON) -> str:
    out = []
    for c in chunk.get("choices") or []:
        if c.get("index", 0) != 0:
            continue
        if route == "chat":
            out.append(str((c.get("delta") or {}).get("content") or ""))
        else:
            out.append(str(c.get("text") or ""))
    return "".join(out)
