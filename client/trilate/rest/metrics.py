"""The front end's own Prometheus series (served on ``/metrics`` after tritonserver's), via prometheus_client.

Each app has its own registry, so that several apps in one process (tests) count apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

disable_created_metrics()  # no *_created samples beside each count (tritonserver's series have none either)

METRICS_MEDIA = CONTENT_TYPE_LATEST
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("trilate_frontend_requests", "REST requests answered by the trilate front end.",
                                 ("route", "method", "status"), registry=self.registry)
        self._latency = Histogram("trilate_frontend_request_duration_seconds",
                                  "Time from request received to response sent.", ("route",), buckets=BUCKETS,
                                  registry=self.registry)
        self.in_progress = Gauge("trilate_frontend_requests_in_progress", "REST requests being answered now.",
                                 registry=self.registry)
        self._tokens = Counter("trilate_frontend_prompt_tokens", "Prompt tokens reported in usage, by route and model.",
                               ("route", "model"), registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def add_tokens(self, route: str, model: str, n: int) -> None:
        self._tokens.labels(route, model).inc(n)

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")
