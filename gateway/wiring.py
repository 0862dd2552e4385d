"""The gateway's collaborators, built from the settings in one place.

``build_gateway`` is the composition root: it wires the engine pool, the
policy and its dispatcher, the Redis-backed store and notifier, the session runner,
replica membership and the work ledger, auth, limits and metrics; the HTTP layer
(``app.py`` and the route modules) only reads the resulting ``Gateway`` and calls
its ``start`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from starlette.requests import Request

from backends.base import Engine
from backends.http1 import HttpClient
from backends.sglang import make_engine
from common.errors import ParrotError

from .auth import Authenticator, Principal
from .completion import Completions
from .dispatcher import Dispatcher
from .engines import EnginePool
from .limits import RateLimiter
from .metrics import Metrics
from .notifier import Notifier
from .policy import SchedulerConfig, make_scheduler
from .programs import Programs, ProgramStore
from .redis_errors import failure as redis_failure
from .replicas import Membership
from .response_store import ResponseStore
from .session_index import SessionIndex
from .session_runner import SessionRunner
from .settings import Settings
from .store import SessionStore
from .tracing import Tracing, wanted
from .work import WorkLedger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("parrot.gateway")

CLUSTER_SCHEME = "redis+cluster://"
MAINTAIN_S = 10.0  # trim the work index
RECONCILE_S = 60.0  # re-run own work Redis lost (sooner after an outage)


def _driver_info() -> dict[str, Any]:
    """redis-py 8 looks its own version up in the package metadata (an email-parser pass
    over METADATA, ~4 ms) for every new connection: name it once."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py < 8
        return {}
    return {"driver_info": DriverInfo(name="redis-py", lib_version=redis.__version__)}


def connect_redis(url: str) -> Any:
    """A client for ``url``: ``redis+cluster://host:port`` is a Redis Cluster (any node
    as the seed; ``rediss+cluster://`` with TLS), anything else one Redis server."""
    for scheme, plain in ((CLUSTER_SCHEME, "redis://"), ("rediss+cluster://", "rediss://")):
        if url.startswith(scheme):
            return RedisCluster.from_url(
                plain + url[len(scheme):], socket_timeout=5, socket_connect_timeout=2,
                decode_responses=False, max_connections=256, **_driver_info(),
            )
    # A blocking pool: past max_connections a command waits (up to 5 s) for a free
    # connection instead of failing at once with "Too many connections" (the default
    # pool's cap is 100, which 500 concurrent sessions exceeded).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=256, timeout=5, socket_timeout=5, socket_connect_timeout=2,
        decode_responses=False, **_driver_info(),
    )
    return aioredis.Redis.from_pool(pool)


@dataclass
class Gateway:
    settings: Settings
    pool: EnginePool
    dispatcher: Dispatcher
    completions: Completions
    redis: Any  # redis.asyncio.Redis or RedisCluster
    store: SessionStore
    notifier: Notifier
    sessions: SessionRunner  # the semantic requests (HTTP side: session_http.py)
    membership: Membership  # the live replicas (gateway/replicas.py)
    ledger: WorkLedger  # this replica's accepted work, adoption of dead replicas' (work.py)
    auth: Authenticator
    limits: RateLimiter
    metrics: Metrics
    programs: Programs
    responses: ResponseStore
    index: SessionIndex
    tracing: Tracing
    peers: HttpClient  # relays to session owners (forwarding.py)
    draining: bool = False
    _loops: list[asyncio.Task[None]] = field(default_factory=list)

    def principal(self, request: Request) -> Principal:
        principal = self.auth.authenticate(request.headers.get("authorization"))
        request.state.tenant = principal.tenant
        return principal

    async def start(self) -> None:
        await self.notifier.start()
        self.programs.store.start()
        await self.pool.start()
        await self.membership.start()
        self._loops.append(asyncio.create_task(self._maintain(), name="parrot-maintain"))

    async def stop(self) -> None:
        """Drain; hand what is left to the other replicas if any is alive, else fail it."""
        self.draining = True
        peers = [r for r in self.membership.live if r != self.membership.id]
        await self.sessions.drain(self.settings.drain_timeout_s, hand_over=bool(peers))
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        handed = bool(peers) and self.sessions.handed_over > 0
        if not handed:
            await self.ledger.leave()
        await self.membership.stop(leave=True, forget=not handed)
        await self.programs.store.stop()
        await self.pool.stop()
        await self.notifier.stop()
        await self.peers.close()
        await self.redis.aclose()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes spans not yet exported

    async def _maintain(self) -> None:
        """Trim the work index; reconcile own work with Redis every ``RECONCILE_S``, and
        soon after Redis was unavailable (a restart or failover may have lost writes)."""
        last_reconcile = time.monotonic()
        outages = self.store.outages + self.notifier.reconnects
        while True:
            await asyncio.sleep(MAINTAIN_S)
            try:
                await self.ledger.trim(self.sessions.busy_sessions())
                now_outages = self.store.outages + self.notifier.reconnects
                if now_outages != outages or time.monotonic() - last_reconcile > RECONCILE_S:
                    await self.ledger.reconcile(self.sessions.live)
                    last_reconcile, outages = time.monotonic(), now_outages
            except Exception as exc:
                if not (isinstance(exc, ParrotError) or redis_failure(exc)):
                    log.exception("work maintenance failed")


def tracing_of(settings: Settings, provider: TracerProvider | None = None) -> Tracing:
    """The tracer of this gateway: the no-op one unless tracing is on (gateway/tracing.py);
    the OpenTelemetry SDK is imported only then."""
    if not wanted(settings.tracing, os.environ):
        return Tracing()
    try:
        from .tracing_otel import OtelTracing
    except ImportError as exc:
        raise RuntimeError("tracing is on but the OpenTelemetry SDK is not installed: "
                           "pip install 'parrot-gateway[otel]'") from exc
    return OtelTracing.build(os.environ, provider=provider)


def build_gateway(
    settings: Settings, *, engines: list[Engine] | None = None, redis_url: str | None = None,
    tracer_provider: TracerProvider | None = None, peer_url: str | None = None,
) -> Gateway:
    """``tracer_provider`` (tests) replaces the one built from the OTEL_* variables when
    tracing is on; ``peer_url``: where other replicas reach this one (default
    ``settings.peer_url()``)."""
    tracing = tracing_of(settings, tracer_provider)
    if engines is None:
        engines = [
            make_engine(
                url,
                settings.backend_kind,
                connect_timeout=settings.engine_connect_timeout_s,
                timeout=settings.engine_timeout_s,
            )
            for url in settings.backend
        ]
    metrics = Metrics()
    pool = EnginePool(
        engines,
        health_interval_s=settings.health_interval_s,
        breaker_failures=settings.breaker_failures,
        breaker_reset_s=settings.breaker_reset_s,
        max_inflight_per_engine=settings.max_inflight_per_engine,
    )
    policy = make_scheduler(settings.scheduler_policy, SchedulerConfig.from_settings(settings))
    dispatcher = Dispatcher(policy, pool, metrics, retry_budget=settings.retry_budget,
                            max_queued=settings.max_queued_requests, tracing=tracing)
    completions = Completions(
        pool, dispatcher, metrics, stream_internally=settings.engine_streaming,
        block_bytes=settings.prefix_block_bytes,
    )
    url = redis_url or settings.redis
    if not url:
        raise ValueError("a Redis URL is required (the CLI starts an embedded one)")
    redis = connect_redis(url)
    store = SessionStore(
        redis,
        ttl_s=settings.session_ttl_s,
        max_value_bytes=settings.max_value_bytes,
        max_variables=settings.max_variables_per_session,
    )
    notifier = Notifier(redis)
    store.attach_notifier(notifier)
    membership = Membership(redis, heartbeat_s=settings.replica_heartbeat_s,
                            ttl_s=settings.replica_ttl_s,
                            url=(peer_url or settings.peer_url()) if settings.forward_sessions else None)
    ledger = WorkLedger(redis, store, membership.id, forget=membership.forget)
    sessions = SessionRunner(settings, store, completions, metrics, replica=membership.id,
                             ledger=ledger, tracing=tracing)
    ledger.run = sessions.adopt
    notifier.on_graph.append(sessions.on_graph)
    membership.on_change.append(lambda live: dispatcher.set_share(1.0 / max(1, len(live))))
    membership.on_dead.append(ledger.adopt)
    membership.on_expired.append(ledger.reindex)
    membership.on_expired.append(sessions.verify_ownership)
    return Gateway(
        settings=settings,
        pool=pool,
        dispatcher=dispatcher,
        completions=completions,
        redis=redis,
        store=store,
        notifier=notifier,
        sessions=sessions,
        membership=membership,
        ledger=ledger,
        auth=Authenticator.from_file(settings.api_keys),
        limits=RateLimiter(redis),
        metrics=metrics,
        programs=Programs(
            ProgramStore(redis, ttl_s=settings.program_ttl_s), metrics,
            enabled=settings.infer_programs, link_user=settings.program_link_user,
        ),
        responses=ResponseStore(redis, ttl_s=settings.session_ttl_s),
        index=SessionIndex(redis, store, ttl_s=settings.session_ttl_s, keep=settings.ui_recent_sessions,
                           on_new=metrics.sessions.inc),
        tracing=tracing,
        # Relayed calls wait as long as the owner takes (it enforces its own timeouts); idle
        # connections close before the peer's keep-alive ends.
        peers=HttpClient(connect_timeout=min(1.0, settings.engine_connect_timeout_s),
                         read_timeout=86400.0, keepalive_s=max(1.0, settings.keep_alive_s - 5)),
    )


__all__ = ["Gateway", "build_gateway", "connect_redis"]
