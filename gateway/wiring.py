"""The gateway's collaborators, built from the settings in one place.

``build_gateway`` is the composition root: it wires the engine pool, the
policy and its dispatcher, the Redis-backed store and notifier, the session runner,
auth, limits and metrics; the HTTP layer (``app.py`` and the route modules)
only reads the resulting ``Gateway``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from starlette.requests import Request

from backends.base import Engine
from backends.sglang import make_engine

from .auth import Authenticator, Principal
from .completion import Completions
from .dispatcher import Dispatcher
from .engines import EnginePool
from .limits import RateLimiter
from .metrics import Metrics
from .notifier import Notifier
from .policy import SchedulerConfig, make_scheduler
from .programs import Programs, ProgramStore
from .response_store import ResponseStore
from .session_index import SessionIndex
from .session_runner import SessionRunner
from .settings import Settings
from .store import SessionStore
from .tracing import Tracing, wanted

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


@dataclass
class Gateway:
    settings: Settings
    pool: EnginePool
    dispatcher: Dispatcher
    completions: Completions
    redis: aioredis.Redis
    store: SessionStore
    notifier: Notifier
    sessions: SessionRunner  # the semantic requests (HTTP side: session_http.py)
    auth: Authenticator
    limits: RateLimiter
    metrics: Metrics
    programs: Programs
    responses: ResponseStore
    index: SessionIndex
    tracing: Tracing
    draining: bool = False

    def principal(self, request: Request) -> Principal:
        principal = self.auth.authenticate(request.headers.get("authorization"))
        request.state.tenant = principal.tenant
        return principal


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
    tracer_provider: TracerProvider | None = None,
) -> Gateway:
    """``tracer_provider`` (tests) replaces the one built from the OTEL_* variables when
    tracing is on."""
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
    dispatcher = Dispatcher(policy, pool, metrics, retry_budget=settings.retry_budget, tracing=tracing)
    completions = Completions(
        pool, dispatcher, metrics, stream_internally=settings.engine_streaming,
        block_bytes=settings.prefix_block_bytes,
    )
    url = redis_url or settings.redis
    if not url:
        raise ValueError("a Redis URL is required (the CLI starts an embedded one)")
    # A blocking pool: past max_connections a command waits (up to 5 s) for a free
    # connection instead of failing at once with "Too many connections" (the default
    # pool's cap is 100, which 500 concurrent sessions exceeded).
    redis_pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=256, timeout=5, socket_timeout=5, socket_connect_timeout=2,
        decode_responses=False,
    )
    redis = aioredis.Redis.from_pool(redis_pool)
    store = SessionStore(
        redis,
        ttl_s=settings.session_ttl_s,
        max_value_bytes=settings.max_value_bytes,
        max_variables=settings.max_variables_per_session,
    )
    notifier = Notifier(redis)
    store.attach_notifier(notifier)
    sessions = SessionRunner(settings, store, completions, metrics, tracing=tracing)
    return Gateway(
        settings=settings,
        pool=pool,
        dispatcher=dispatcher,
        completions=completions,
        redis=redis,
        store=store,
        notifier=notifier,
        sessions=sessions,
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
    )


__all__ = ["Gateway", "build_gateway"]
