"""Prometheus metrics: requests, latency split by pipeline stage, and tokens.

Each app has its own registry (no process-global state), served at GET /metrics in the
Prometheus text format. Routes are labelled by their template (`/v1/chat/completions`),
never by raw paths, so label cardinality stays bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.generation.base import Completion

# Seconds: from sub-millisecond retrieval to minute-long CPU generations.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragtune_http_requests", "HTTP requests by route, method and status.", ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragtune_http_request_duration_seconds", "Time to the response headers, by route.", ["route"],
            buckets=BUCKETS, registry=self.registry,
        )
        self.stages = Histogram(
            "ragtune_stage_duration_seconds", "Time spent per answer in each stage: retrieval, packing, generation.",
            ["stage"], buckets=BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "ragtune_tokens", "Tokens processed, by kind (prompt, completion) and model.", ["kind", "model"],
            registry=self.registry,
        )

    def observe_answer(self, timings_ms: dict[str, float], completion: Completion) -> None:
        for stage, ms in timings_ms.items():
            self.stages.labels(stage).observe(ms / 1000)
        self.tokens.labels("prompt", completion.model).inc(completion.prompt_tokens)
        self.tokens.labels("completion", completion.model).inc(completion.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every request and times it to its response headers (pure ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            self.metrics.requests.labels(_route(scope), scope["method"], str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
