"""Optional OpenTelemetry tracing: the switch, and the no-op tracer used when it is off.

The request path only ever talks to a `Tracing` object (injected by ``wiring.py``):

    span(name, attrs)      a leaf span, child of the current span (never made current,
                           so it may enclose ``yield`` in a generator)
    headers(span)          trace headers for an engine call made under ``span``
    annotate(attrs)        attributes on the current span (the request's, or its run's)
    run_span / using /     the span of a semantic request's run (`session_runner`)
    end_run

Off (the default) it is this module's `Tracing`: every call returns at once and no
OpenTelemetry SDK code is imported by the gateway. The client's own ``traceparent`` and
``tracestate`` are still passed on to the engines unchanged (the gateway is then
invisible in the trace, as a plain proxy would be). On, ``wiring.py`` imports
``tracing_otel`` (the SDK), which continues the client's trace and injects the
gateway's span context into every engine call.

On when ``tracing`` is set (``PARROT_TRACING=1``), or when the standard
``OTEL_TRACES_EXPORTER`` (other than ``none``) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true`` turns it off.
Nothing connects before the first export.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

Attributes = Mapping[str, Any]
T = TypeVar("T")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_TRACESTATE = 512  # W3C: a vendor list of up to 32 members; longer ones may be dropped

# The client's W3C trace headers, set per request by the request-id middleware: what
# the engines get while tracing is off.
incoming: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "trace_headers", default=None
)


def client_trace_headers(traceparent: bytes | None, tracestate: bytes | None) -> dict[str, str] | None:
    """The client's trace headers worth passing on: a well-formed ``traceparent``
    (version 00 layout) and the ``tracestate`` that goes with it."""
    if not traceparent:
        return None
    tp = traceparent.decode("latin-1").strip().lower()
    if not _TRACEPARENT.match(tp) or tp.startswith("ff"):
        return None
    out = {"traceparent": tp}
    if tracestate and len(tracestate) <= MAX_TRACESTATE:
        out["tracestate"] = tracestate.decode("latin-1").strip()
    return out


class NoSpan:
    """The span of a tracer that is off: accepts everything, records nothing."""

    __slots__ = ()

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Attributes) -> None:
        pass

    def add_event(self, name: str, attributes: Attributes | None = None) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NO_SPAN = NoSpan()


class Tracing:
    """Tracing off: the no-op tracer (``tracing_otel.OtelTracing`` is the one that records)."""

    enabled = False
    middleware: Any = None  # the ASGI middleware opening each request's server span (on)

    def span(self, name: str, attributes: Attributes | None = None, *, client: bool = False) -> Any:
        return NO_SPAN

    def headers(self, span: Any) -> dict[str, str] | None:
        return incoming.get()

    def annotate(self, attributes: Attributes) -> None:
        pass

    def run_span(self, name: str, attributes: Attributes, *, detached: bool) -> Any:
        return NO_SPAN

    @contextlib.contextmanager
    def using(self, span: Any) -> Iterator[None]:
        yield

    def end_run(self, span: Any, attributes: Attributes, exc: BaseException | None = None,
                *, failed: str | None = None) -> None:
        """End a run's span; ``failed``: the run failed without raising (a stream's producer)."""

    def run(self, span: Any, coro: Awaitable[T],
            outcome: Callable[[], tuple[Attributes, str | None]]) -> Awaitable[T]:
        """``coro`` with ``span`` current (what it does becomes its children), ending
        ``span`` with ``outcome()``: attributes, and an error message if it failed.
        Off: ``coro`` itself."""
        return coro

    def shutdown(self) -> None:
        pass


def wanted(flag: bool, environ: Mapping[str, str]) -> bool:
    """Is tracing on? The setting, or the standard OpenTelemetry variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if flag:
        return True
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter != "none":
        return True
    return any(environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


__all__ = ["NO_SPAN", "Tracing", "client_trace_headers", "incoming", "wanted"]
