"""Prometheus instruments, declared once.

Library code never touches prometheus_client's global registry: :class:`Metrics` takes
the registry to register into, so every test (and every supervisor) builds its own. The
names follow Prometheus conventions (``chworkers_`` prefix, base units, ``_total`` for
counters) and are the contract the Grafana dashboard and the alert rules in
``grafana/`` are written against: renaming one is a breaking change.

The instruments are declared by area, each in its module: the client side's
(:mod:`~chworkers.ops.clientmetrics`), the runtime's (:mod:`~chworkers.ops.runtimemetrics`),
the daemon's (:mod:`~chworkers.ops.daemonmetrics`) and the endpoints' and health's
(:mod:`~chworkers.ops.endpointmetrics`); :class:`Metrics` is all of them in one object.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Info

from chworkers.http.limits import REFUSAL_REASONS
from chworkers.ops.clientmetrics import ClientMetrics
from chworkers.ops.daemonmetrics import DaemonMetrics
from chworkers.ops.endpointmetrics import EndpointMetrics, HttpObserver
from chworkers.ops.runtimemetrics import RuntimeMetrics


class Metrics(ClientMetrics, RuntimeMetrics, DaemonMetrics, EndpointMetrics):
    """All of chworkers' instruments, registered into ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = Info("chworkers_build", "chworkers version.", registry=registry)
        # In the order they were always registered (the exposition lists them so).
        ClientMetrics.__init__(self, registry)
        RuntimeMetrics.__init__(self, registry)
        DaemonMetrics.__init__(self, registry)
        EndpointMetrics.__init__(self, registry)

    def http_endpoint(self, endpoint: str) -> HttpObserver:
        """Series for one HTTP endpoint (zero-valued until something happens)."""
        for reason in REFUSAL_REASONS:
            self.http_refused.labels(endpoint=endpoint, reason=reason)
        self.http_connections.labels(endpoint=endpoint)
        return HttpObserver(self, endpoint)
