"""What the daemon's endpoints and health say: HTTP connections and refusals by
endpoint, the health level and problems, the embedded ClickHouse child (part of
:class:`~chworkers.ops.metrics.Metrics`), and :class:`HttpObserver`, one endpoint's
series."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class EndpointMetrics:
    """The HTTP endpoints', health's and the embedded child's instruments, registered
    into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.http_connections = Gauge(
            "chworkers_http_connections",
            "Connections an HTTP endpoint serves now (one thread each), by endpoint: push "
            "(POST /ingest/<table>) or metrics; at most its limits.max_connections.",
            ["endpoint"],
            registry=r,
        )
        self.http_refused = Counter(
            "chworkers_http_refused_total",
            "Clients an HTTP endpoint refused at one of its limits, by endpoint and reason: "
            "busy (max_connections, 503), memory (max_buffered_bytes, 503), slow (408), "
            "too_large (413), malformed (400: bad framing or request line).",
            ["endpoint", "reason"],
            registry=r,
        )

        # Health (chworkers.ops.health) and the embedded ClickHouse child.
        self.health_level = Gauge(
            "chworkers_health_level",
            "Health: 0 ok, 1 degraded (data safe, not flowing), 2 failing (restart needed).",
            registry=r,
        )
        self.health_problems = Gauge(
            "chworkers_health_problems",
            "Problems a component reports now, by component.",
            ["component"],
            registry=r,
        )
        self.embedded_up = Gauge(
            "chworkers_embedded_up",
            "Whether the daemon's embedded ClickHouse child is serving (1) or not (0; also "
            "when the daemon uses another ClickHouse).",
            registry=r,
        )
        self.embedded_restarts = Counter(
            "chworkers_embedded_restarts_total",
            "Times the embedded ClickHouse child died and was started again.",
            registry=r,
        )


class HttpObserver:
    """Counts an HTTP endpoint's refusals (``on_refusal``, its server's hook) and
    publishes its open connections (``connections``, set once the server exists) when
    scraped (``refresh``)."""

    def __init__(self, metrics: EndpointMetrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self.connections: Callable[[], int] = lambda: 0

    def on_refusal(self, reason: str) -> None:
        self._metrics.http_refused.labels(endpoint=self._endpoint, reason=reason).inc()

    def refresh(self) -> None:
        self._metrics.http_connections.labels(endpoint=self._endpoint).set(self.connections())
