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

On Redis Cluster the notifier uses classic pub/sub, not sharded pub/sub
(SSUBSCRIBE/SPUBLISH, Redis 7): a classic PUBLISH, from a script or a MULTI on
whichever node owns the session's slot, is broadcast over the cluster bus to
every node, so one PSUBSCRIBE on any node hears every session's events. Sharded
pub/sub has no pattern subscriptions: the notifier would have to SSUBSCRIBE to
each session it waits on, on that slot's node, and follow slot moves. The
broadcast costs every node one message per write, which is small next to the
write itself. If the node it listens on fails, the notifier reconnects to
another node (round robin over the cluster's current nodes), then wakes every
waiter to re-read, as after any reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

EventKind = Literal["ready", "failed", "deleted", "graph"]


def channel_name(prefix: str, tag: str) -> str:
    """The pub/sub channel of one session; `tag` is the session's hash tag."""
    return f"{prefix}:{{{tag}}}:events"


def channel_pattern(prefix: str) -> str:
    """The PSUBSCRIBE pattern matching every session channel under `prefix`."""
    return f"{prefix}:{{*}}:events"


@dataclass(frozen=True)
class Event:
    """A variable (`name`) or the whole session (`name` None) changed state; ``graph``:
    a request registered with inputs whose producers may already be queued (`name` is
    the session's graph version then)."""

    tenant: str
    session: str
    kind: EventKind
    name: str | None = None
    # In-process only (never published): the value a writer in this process just wrote,
    # and when the write completed (epoch s), so a local waiter needs no re-read.
    value: str | None = field(default=None, compare=False)
    written_at: float | None = field(default=None, compare=False)

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
    leaves it set and the next `wait` returns at once. It also remembers what the
    events said since the last `clear` (`ready` names, `failed`, `reset`), so an
    owner waiting for several variables re-reads once, when they are all announced,
    not once per event (every event arrives twice when the writer is in this
    process: directly, then through Redis).
    """

    def __init__(self, names: frozenset[str] | None) -> None:
        self.names = names
        self._event = asyncio.Event()
        self.ready: set[str] = set()
        self.values: dict[str, tuple[str, float]] = {}  # local writes: (value, written_at)
        self.failed = False  # a watched variable failed, or the session went
        self.reset = False  # anything may have changed (a reconnect): re-read

    def clear(self) -> None:
        self._event.clear()
        self.ready.clear()
        self.values.clear()
        self.failed = self.reset = False

    def rearm(self) -> None:
        """Wait on for more events, keeping what the earlier ones said."""
        self._event.clear()

    def announced(self, pending: set[str]) -> bool:
        """Do the events since `clear` say a re-read of ``pending`` would settle?"""
        return self.reset or self.failed or pending <= self.ready

    def known(self, pending: set[str]) -> bool:
        """Did local writes since `clear` hand over every value in ``pending``?"""
        return not self.reset and not self.failed and pending <= self.values.keys()

    def note(self, event: Event) -> None:
        if event.kind == "ready" and event.name is not None:
            self.ready.add(event.name)
            if event.value is not None and event.written_at is not None:
                self.values[event.name] = (event.value, event.written_at)
        else:
            self.failed = True
        self._event.set()

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


_INTERNAL_KWARGS = ("maint_notifications_pool_handler", "maint_notifications_config",
                    "event_dispatcher", "retry")


def _own_client(redis: str | aioredis.Redis) -> aioredis.Redis:
    """A private client with client-side retries off: every reconnect goes through _run.

    Given a client, reuse its pool's connection settings (host, auth, TLS...).
    """
    no_retry = Retry(NoBackoff(), 0)
    if isinstance(redis, str):
        return aioredis.from_url(redis, retry=no_retry)
    pool = redis.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _INTERNAL_KWARGS}
    own = aioredis.ConnectionPool(connection_class=pool.connection_class, retry=no_retry, **kwargs)
    return aioredis.Redis.from_pool(own)


# What a plain client to one cluster node keeps of the cluster client's settings.
_NODE_KWARGS = frozenset({"username", "password", "credential_provider", "socket_timeout",
                          "socket_connect_timeout", "client_name", "protocol"})


class _ClusterNodes:
    """Plain clients to the nodes of a Redis Cluster, one node after another."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._next = 0

    async def client(self) -> aioredis.Redis:
        await self.cluster.initialize()
        nodes = self.cluster.get_nodes()
        if not nodes:
            raise RedisError("no cluster node known")
        node = nodes[self._next % len(nodes)]
        self._next += 1
        kwargs = {k: v for k, v in node.connection_kwargs.items()
                  if k in _NODE_KWARGS or k.startswith("ssl")}
        return aioredis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0),
                              **kwargs)


class Notifier:
    """One pub/sub connection per process, fanning events out to local waiters.

    `await start()` returns once subscribed (or after `timeout`, while it keeps
    reconnecting in the background); `await stop()` ends it. Use in one event
    loop.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis | RedisCluster,
        *,
        prefix: str = "parrot",
        ping_interval_s: float = 5.0,
        backoff_min_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self._nodes = _ClusterNodes(redis) if isinstance(redis, RedisCluster) else None
        self._redis: aioredis.Redis | None = None if self._nodes else _own_client(redis)  # type: ignore[arg-type]
        self._pattern = channel_pattern(prefix)
        self._ping_interval_s = ping_interval_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._waiters: dict[tuple[str, str], set[Waiter]] = {}
        # Hear about graph changes (a consumer registered after its producers were queued).
        self.on_graph: list[Callable[[str, str, int], None]] = []
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
        if self._redis is not None:
            await self._redis.aclose()
        self.wake_all()  # let waiters re-read instead of sleeping on a dead notifier

    @contextlib.contextmanager
    def watch(
        self, tenant: str, session: str, names: Iterable[str] | None = None
    ) -> Iterator[Waiter]:
        """Register a waiter for `names` (None: any variable) of one session."""
        waiter = self.open(tenant, session, names)
        try:
            yield waiter
        finally:
            self.close(tenant, session, waiter)

    def open(self, tenant: str, session: str, names: Iterable[str] | None = None) -> Waiter:
        """`watch` without the block: the caller must `close` it."""
        waiter = Waiter(frozenset(names) if names is not None else None)
        self._waiters.setdefault((tenant, session), set()).add(waiter)
        return waiter

    def close(self, tenant: str, session: str, waiter: Waiter) -> None:
        key = (tenant, session)
        group = self._waiters.get(key)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[key]

    def dispatch(self, event: Event) -> None:
        if event.kind == "graph":
            try:
                version = int(event.name or "")
            except ValueError:
                return
            for fn in self.on_graph:
                fn(event.tenant, event.session, version)
            return
        for waiter in self._waiters.get((event.tenant, event.session), ()):
            if waiter.wants(event.name):
                waiter.note(event)

    def wake_all(self) -> None:
        for group in self._waiters.values():
            for waiter in group:
                waiter.reset = True
                waiter.wake()

    async def _run(self) -> None:
        delay = self._backoff[0]
        first = True
        while True:
            client = self._redis
            pubsub: PubSub | None = None
            try:
                if self._nodes is not None:
                    client = await self._nodes.client()
                assert client is not None
                pubsub = client.pubsub()
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
            except Exception as exc:  # Redis trouble (or redis-py tripping over it): reconnect
                if self._connected.is_set():
                    log.warning("notifier lost its Redis connection: %r", exc)
                self._connected.clear()
            finally:
                with contextlib.suppress(Exception):
                    if pubsub is not None:
                        await pubsub.aclose()
                if self._nodes is not None and client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
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
