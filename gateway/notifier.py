"""Cross-process wake-ups for variable waiters over one Redis pub/sub connection.

Writers (gateway/store.py) PUBLISH an `Event` on the session's channel inside
the same MULTI as the state change. Each process runs one `Notifier`: a single
pub/sub connection PSUBSCRIBEd to every session channel, dispatching events to
local `Waiter`s keyed by (tenant, session). A waiter only says "something you
watch may have changed": its owner re-reads the state from Redis, so a
duplicate, late or spurious wake-up is harmless.

Lost messages are healed, not prevented: when the connection drops, the
notifier reconnects with backoff, resubscribes, and only then wakes every
waiter so each re-reads. Its connection has client-side retries turned off on
purpose, so no reconnect happens behind its back without that wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EventKind = Literal["ready", "failed", "deleted"]


def channel_name(prefix: str, tag: str) -> str:
    """The pub/sub channel of one session; `tag` is the session's hash tag."""
    return f"{prefix}:{{{tag}}}:events"


def channel_pattern(prefix: str) -> str:
    """The PSUBSCRIBE pattern matching every session channel under `prefix`."""
    return f"{prefix}:{{*}}:events"


@dataclass(frozen=True)
class Event:
    """A variable (`name`) or the whole session (`name` None) changed state."""

    tenant: str
    session: str
    kind: EventKind
    name: str | None = None

    def encode(self) -> str:
        return json.dumps({"t": self.tenant, "s": self.session, "k": self.kind, "n": self.name})

    @classmethod
    def decode(cls, data: bytes | str) -> Event | None:
        """Parse a message; None for anything malformed (never crash the reader)."""
        try:
            d = json.loads(data)
            return cls(tenant=str(d["t"]), session=str(d["s"]), kind=d["k"], name=d.get("n"))
        except (ValueError, TypeError, KeyError):
            return None


class Waiter:
    """Set when something it watches may have changed; the owner then re-reads.

    Clear it *before* reading state, so an event racing with the read still
    leaves it set and the next `wait` returns at once.
    """

    def __init__(self, names: frozenset[str] | None) -> None:
        self.names = names
        self._event = asyncio.Event()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float) -> bool:
        """True if woken, False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def wants(self, name: str | None) -> bool:
        return name is None or self.names is None or name in self.names

    def wake(self) -> None:
        self._event.set()


def _own_client(redis: str | aioredis.Redis) -> aioredis.Redis:
    """A private client with client-side retries off: every reconnect goes through _run.

    Given a client, reuse its pool's connection settings (host, auth, TLS...).
    """
    no_retry = Retry(NoBackoff(), 0)
    if isinstance(redis, str):
        return aioredis.from_url(redis, retry=no_retry)
    pool = redis.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = no_retry
    for internal in ("maint_notifications_pool_handler", "maint_notifications_config"):
        kwargs.pop(internal, None)  # bound to the caller's pool
    own = aioredis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return aioredis.Redis.from_pool(own)


class Notifier:
    """One pub/sub connection per process, fanning events out to local waiters.

    `await start()` returns once subscribed (or after `timeout`, while it keeps
    reconnecting in the background); `await stop()` ends it. Use in one event
    loop.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        prefix: str = "parrot",
        ping_interval_s: float = 5.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self._redis = _own_client(redis)
        self._pattern = channel_pattern(prefix)
        self._ping_interval_s = ping_interval_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._waiters: dict[tuple[str, str], set[Waiter]] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0  # successful resubscriptions after the first

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self, timeout: float = 5.0) -> bool:
        """Start the reader; True once subscribed within `timeout`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="parrot-notifier")
        return await self.wait_connected(timeout)

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected.clear()
        await self._redis.aclose()
        self.wake_all()  # let waiters re-read instead of sleeping on a dead notifier

    @contextlib.contextmanager
    def watch(
        self, tenant: str, session: str, names: Iterable[str] | None = None
    ) -> Iterator[Waiter]:
        """Register a waiter for `names` (None: any variable) of one session."""
        key = (tenant, session)
        waiter = Waiter(frozenset(names) if names is not None else None)
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            group = self._waiters.get(key)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[key]

    def dispatch(self, event: Event) -> None:
        for waiter in self._waiters.get((event.tenant, event.session), ()):
            if waiter.wants(event.name):
                waiter.wake()

    def wake_all(self) -> None:
        for group in self._waiters.values():
            for waiter in group:
                waiter.wake()

    async def _run(self) -> None:
        delay = self._backoff[0]
        first = True
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._subscribe(pubsub)
                self._connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("notifier resubscribed to %s", self._pattern)
                first = False
                delay = self._backoff[0]
                # Anything published while we were away is lost: re-read all.
                self.wake_all()
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("notifier lost its Redis connection: %s", exc)
                self._connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _subscribe(self, pubsub: PubSub) -> None:
        """PSUBSCRIBE and wait for the server's confirmation."""
        await pubsub.psubscribe(self._pattern)
        while True:
            msg = await pubsub.get_message(timeout=self._ping_interval_s)
            if msg is None:
                raise RedisError("no psubscribe confirmation")
            if msg["type"] == "psubscribe":
                return
            self._handle(msg)

    async def _listen(self, pubsub: PubSub) -> None:
        """Dispatch messages; PING when idle and give up if even that goes unanswered."""
        pinged = False
        while True:
            msg = await pubsub.get_message(timeout=self._ping_interval_s)
            if msg is None:
                if pinged:
                    raise RedisError("pub/sub connection silent")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            self._handle(msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "pmessage":
            return
        event = Event.decode(msg["data"])
        if event is not None:
            self.dispatch(event)
