"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PIPELINE_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1,
                    2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "parrot_requests_total", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "parrot_request_latency_seconds", "HTTP request latency by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "parrot_time_to_first_token_seconds", "Time to first token of streamed requests",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "parrot_queue_wait_seconds", "Time a ready request waited in the gateway queue",
            ["criteria"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge(
            "parrot_engine_inflight_requests", "Requests in flight per engine", ["engine"],
            registry=r,
        )
        self.engine_healthy = Gauge(
            "parrot_engine_healthy", "1 when the engine is in rotation", ["engine"], registry=r
        )
        self.engine_errors = Counter(
            "parrot_engine_errors_total", "Engine failures by kind", ["engine", "kind"], registry=r
        )
        self.retries = Counter(
            "parrot_engine_retries_total", "Requests retried on another engine", registry=r
        )
        self.tokens = Counter(
            "parrot_tokens_total", "Tokens by kind (prompt, cached, completion)", ["kind"],
            registry=r,
        )
        self.queued = Gauge(
            "parrot_queued_requests", "Ready requests waiting in the gateway queue", registry=r
        )
        self.sessions = Counter(
            "parrot_sessions_total", "Sessions started (first request of a session, any replica)",
            registry=r,
        )
        self.variables = Counter(
            "parrot_variables_total", "Semantic variables resolved by outcome", ["status"],
            registry=r,
        )

        # Programs inferred from plain traffic (gateway/programs.py). Link rate:
        # rate(parrot_program_requests_total{result="linked"}) / rate(parrot_program_requests_total)
        self.program_requests = Counter(
            "parrot_program_requests_total",
            "Plain requests by program inference result (new program, linked to one, unplaced)",
            ["result"], registry=r,
        )
        self.program_links = Counter(
            "parrot_program_links_total",
            "Plain requests placed in a program, by reason (new, hint, chain, tool, content, user)",
            ["reason"], registry=r,
        )
        self.program_store_errors = Counter(
            "parrot_program_store_errors_total",
            "Program state reads (link) or writes (done) that Redis failed", ["op"], registry=r,
        )

        self.pipeline = Histogram(
            "parrot_pipeline_seconds",
            "From a semantic request's last input variable being written to the request being "
            "handed to the dispatcher", buckets=PIPELINE_BUCKETS, registry=r,
        )
        self.adopted = Counter(
            "parrot_adopted_requests_total",
            "Semantic requests taken over from dead replicas", registry=r,
        )

        self.forwarded = Counter(
            "parrot_forwarded_requests_total",
            "Session requests this replica relayed to the session's owner, by outcome "
            "(forwarded, owner_unreachable: served here instead, owner_lost, client_gone)",
            ["outcome"], registry=r,
        )

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._usage = tuple(self.tokens.labels(k) for k in ("prompt", "cached", "completion"))

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: prometheus-client validates and locks on
        every ``labels`` call, a measurable cost per request on the hot path."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe_usage(self, prompt: int, cached: int, completion: int) -> None:
        p, c, o = self._usage
        p.inc(prompt)
        c.inc(cached)
        o.inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
