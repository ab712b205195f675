"""Prometheus metrics of one app (``GET /metrics``), kept in a registry of its own.

A per-app :class:`prometheus_client.CollectorRegistry` means two apps in one process (tests, an
embedding application) never share or double-register counters. Queue depth and batch size are
read from the scheduler when scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_error",
               499: "client_closed_request", 503: "service_unavailable"}
BASE = "base"  # the adapter label of requests answered by the base model


class ServerMetrics:
    """Counters, histograms and gauges of the server; ``render()`` gives the Prometheus text."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float], batch_size: Callable[[], float]):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("adaptrix_requests", "HTTP requests answered, by endpoint and status.",
                                ["endpoint", "status"], registry=registry)
        self.errors = Counter("adaptrix_request_errors", "Requests answered with an error, by endpoint and error type.",
                              ["endpoint", "type"], registry=registry)
        self.latency = Histogram("adaptrix_request_latency_seconds", "Wall-clock time of generation requests.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("adaptrix_time_to_first_token_seconds", "Time from arrival to the first generated token.",
                              ["endpoint"], buckets=TTFT_BUCKETS, registry=registry)
        self.tokens_in = Counter("adaptrix_prompt_tokens", "Prompt tokens processed, by adapter.", ["adapter"],
                                 registry=registry)
        self.tokens_out = Counter("adaptrix_completion_tokens", "Tokens generated, by adapter.", ["adapter"],
                                  registry=registry)
        self.adapter_requests = Counter("adaptrix_adapter_requests", "Generation requests, by adapter used.",
                                        ["adapter"], registry=registry)
        self.adapter_latency = Histogram("adaptrix_adapter_latency_seconds",
                                         "Wall-clock time of generation requests, by adapter used.", ["adapter"],
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.routes = Counter("adaptrix_route_decisions", "adapter='auto' decisions, by router and adapters chosen.",
                              ["router", "selected"], registry=registry)
        self.cancelled = Counter("adaptrix_cancelled_requests", "Requests whose client went away before the end.",
                                 ["endpoint"], registry=registry)
        self.queue_depth = Gauge("adaptrix_queue_depth", "Requests waiting for a batch slot.", registry=registry)
        self.queue_depth.set_function(queue_depth)
        self.batch_size = Gauge("adaptrix_batch_size", "Requests in the running batch.", registry=registry)
        self.batch_size.set_function(batch_size)

    def observe_result(self, endpoint: str, result: Any, ttft_ms: float | None) -> None:
        """Record one finished generation: latency, TTFT, tokens and adapters (per adapter), routing."""
        self.latency.labels(endpoint).observe(result.latency_ms / 1000)
        if ttft_ms is not None:
            self.ttft.labels(endpoint).observe(ttft_ms / 1000)
        adapters = sorted(result.adapter_weights) or [BASE]
        label = "+".join(adapters)
        self.adapter_requests.labels(label).inc()
        self.adapter_latency.labels(label).observe(result.latency_ms / 1000)
        self.tokens_in.labels(label).inc(result.prompt_tokens)
        self.tokens_out.labels(label).inc(result.completion_tokens)
        if result.routing:
            self.routes.labels(result.routing.get("router") or "unknown", label).inc()

    def observe_status(self, endpoint: str, status: int) -> None:
        """Count one answer; statuses from 400 up also count as errors of the matching OpenAI type."""
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, ERROR_TYPES.get(status, "server_error" if status >= 500 else "client_error")).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
