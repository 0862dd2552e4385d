"""Tracing on: OpenTelemetry SDK spans, W3C trace context in and out, OTLP export.

Imported only when tracing is on (``wiring.tracing_of``). The provider is this
gateway's own (not the process-global one), built from the standard variables,
which the SDK reads itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
(resource; the service name defaults to ``parrot-gateway``), ``OTEL_TRACES_SAMPLER``
and ``_ARG`` (sampler), ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``_HEADERS``,
``_TIMEOUT``, ``_COMPRESSION`` (OTLP over HTTP/protobuf), ``OTEL_BSP_*`` (batching),
``OTEL_PROPAGATORS`` (default W3C ``tracecontext,baggage``). ``OTEL_TRACES_EXPORTER``
picks exporters: ``otlp`` (default), ``console``, ``none``.

The server span is opened by a small ASGI middleware rather than the
``opentelemetry-instrumentation-asgi`` package: that one adds a span per
``receive``/``send`` message (one per streamed chunk) and names spans by raw
path; this one opens one span named by the route template and reads the tenant
and status the gateway settles on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .tracing import NO_SPAN, Attributes, Tracing

T = TypeVar("T")
SCOPE = "parrot-gateway"
UNTRACED = frozenset({"/health", "/ready", "/metrics"})  # probes and scrapes: noise


def _clean(attributes: Attributes | None) -> dict[str, Any]:
    """OpenTelemetry refuses None values (with a warning each): drop them."""
    return {k: v for k, v in attributes.items() if v is not None} if attributes else {}


def _ended(span: Any, exc: BaseException | None) -> None:
    """Settle a span's status from how its block ended: a cancellation (client gone,
    session deleted, generator closed) is not an error of ours."""
    if exc is not None:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            span.set_attribute("parrot.outcome", "cancelled")
        else:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    span.end()


class _Leaf:
    """A span for one block, child of the current span, never made current itself."""

    __slots__ = ("_tracer", "_name", "_attrs", "_kind", "span")

    def __init__(self, tracer: trace.Tracer, name: str, attrs: Attributes | None, kind: SpanKind) -> None:
        self._tracer, self._name, self._attrs, self._kind = tracer, name, attrs, kind

    def __enter__(self) -> trace.Span:
        self.span = self._tracer.start_span(self._name, kind=self._kind, attributes=_clean(self._attrs))
        return self.span

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> None:
        _ended(self.span, exc)


class OtelTracing(Tracing):
    enabled = True

    def __init__(self, provider: TracerProvider, *, owned: bool) -> None:
        self.provider = provider
        self.owned = owned  # built here: shut down (flushed) with the gateway
        self.tracer = provider.get_tracer(SCOPE)
        self.middleware = TracingMiddleware

    @classmethod
    def build(cls, environ: Mapping[str, str], *, provider: TracerProvider | None = None) -> OtelTracing:
        if provider is not None:
            return cls(provider, owned=False)
        return cls(build_provider(environ), owned=True)

    # -- spans of the request path --------------------------------------------------------
    def span(self, name: str, attributes: Attributes | None = None, *, client: bool = False) -> Any:
        parent = trace.get_current_span()
        if not parent.is_recording() and parent.get_span_context().is_valid:
            # Its request was sampled out; so would this span be (the standard samplers
            # follow the parent): skip the SDK's cost of deciding it span by span.
            return NO_SPAN
        return _Leaf(self.tracer, name, attributes, SpanKind.CLIENT if client else SpanKind.INTERNAL)

    def headers(self, span: Any) -> dict[str, str] | None:
        carrier: dict[str, str] = {}
        # A skipped span (sampled out) passes on its request's context, flagged unsampled.
        ctx = None if span is NO_SPAN else trace.set_span_in_context(span)
        propagate.inject(carrier, context=ctx)
        return carrier or None

    def annotate(self, attributes: Attributes) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(_clean(attributes))

    def run_span(self, name: str, attributes: Attributes, *, detached: bool) -> Any:
        """The span of a semantic request's run. Detached (the run outlives the HTTP
        answer: ``X-Parrot-Async``) it is the root of a trace of its own, linked to the
        submitting request's span, which names that trace in ``parrot.run.trace_id``."""
        if not detached:
            return self.tracer.start_span(name, attributes=_clean(attributes))
        submitter = trace.get_current_span()
        links = [Link(submitter.get_span_context())] if submitter.get_span_context().is_valid else []
        span = self.tracer.start_span(name, context=otel_context.Context(), links=links,
                                      attributes=_clean(attributes))
        if submitter.is_recording():
            submitter.set_attribute("parrot.run.trace_id",
                                    trace.format_trace_id(span.get_span_context().trace_id))
        return span

    @contextlib.contextmanager
    def using(self, span: Any) -> Iterator[None]:
        with trace.use_span(span, end_on_exit=False, record_exception=False,
                            set_status_on_exception=False):
            yield

    def end_run(self, span: Any, attributes: Attributes, exc: BaseException | None = None,
                *, failed: str | None = None) -> None:
        if span.is_recording():
            span.set_attributes(_clean(attributes))
            if exc is None and failed:
                span.set_status(Status(StatusCode.ERROR, failed[:200]))
        _ended(span, exc)

    def run(self, span: Any, coro: Awaitable[T],
            outcome: Callable[[], tuple[Attributes, str | None]]) -> Awaitable[T]:
        return self._run(span, coro, outcome)

    async def _run(self, span: Any, coro: Awaitable[T],
                   outcome: Callable[[], tuple[Attributes, str | None]]) -> T:
        error: BaseException | None = None
        try:
            with self.using(span):
                return await coro
        except BaseException as exc:
            error = exc
            raise
        finally:
            attributes, failed = outcome()
            self.end_run(span, attributes, error, failed=failed)

    def shutdown(self) -> None:
        if self.owned:
            self.provider.force_flush(5000)
            self.provider.shutdown()


def build_provider(environ: Mapping[str, str]) -> TracerProvider:
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "parrot-gateway"}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in filter(None, names):
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this gateway exports with "
                             "'otlp' (HTTP/protobuf), 'console' or 'none'")
    return provider


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only 'http/protobuf' is "
                         "supported (point it at the collector's port 4318)")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError("OTLP export needs opentelemetry-exporter-otlp-proto-http: "
                           "pip install 'parrot-gateway[otel]'") from exc
    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*


class TracingMiddleware:
    """One SERVER span per client request, continuing the client's W3C trace context."""

    def __init__(self, app: ASGIApp, tracing: OtelTracing, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.tracer = tracing.tracer
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNTRACED:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        route, method = self.route_of(scope), scope.get("method", "GET")
        state = scope.setdefault("state", {})
        attrs = {"http.request.method": method, "http.route": route, "url.path": scope.get("path", ""),
                 "parrot.request.id": state.get("request_id")}
        if session := headers.get("x-parrot-session"):
            attrs["parrot.session.id"] = session[:128]
        span = self.tracer.start_span(f"{method} {route}", context=propagate.extract(headers),
                                      kind=SpanKind.SERVER, attributes=_clean(attrs))
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False,
                                set_status_on_exception=False):
                await self.app(scope, receive, send_status)
        except BaseException as exc:
            _settle(span, scope, method, status)
            _ended(span, exc)
            raise
        _settle(span, scope, method, status)
        span.end()


def _settle(span: Any, scope: Scope, method: str, status: int) -> None:
    """What is known once the request was answered: its status, its tenant, and the
    route template the router matched (a better name than the path-based guess)."""
    if not span.is_recording():
        return
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attributes(_clean({"http.response.status_code": status,
                                "parrot.tenant": scope.get("state", {}).get("tenant")}))
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
