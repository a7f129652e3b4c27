"""The Supervisor's observing methods: its health, its metrics endpoint, readiness.

:class:`Observing` is the part of :class:`~chworkers.workers.supervisor.Supervisor`'s
public face that a program embedding it (the daemon) uses to watch it and to add its own
state: health checks, gauges refreshed before each scrape, what ``/readyz`` waits for. The
answers come from its :class:`~chworkers.workers.probes.Probes`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from chworkers.errors import ConfigError
from chworkers.ops.exposition import MetricsEndpoint
from chworkers.ops.health import Health, Report
from chworkers.ops.metrics import Metrics
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.probes import Probes

__all__ = ["Observing"]


class Observing:
    """How a :class:`~chworkers.workers.supervisor.Supervisor` is watched."""

    registry: CollectorRegistry
    metrics: Metrics
    #: The checks ``/healthz`` runs; add a program's own components with ``add``.
    health_checks: Health
    #: The HTTP endpoint of ``/metrics``, ``/healthz`` and ``/readyz`` (once started, when
    #: ``metrics_port`` is set).
    endpoint: MetricsEndpoint | None
    _probes: Probes

    def ready_when(self, check: Callable[[], str | None]) -> None:
        """Make ``/readyz`` answer what ``check`` says instead of waiting for a ready
        worker: ``check()`` returns None when ready, or why not. The supervisor's own
        conditions still apply (started, not stopping, its health not failing). The
        daemon uses it: it accepts data before its workers are up (docs/daemon.md)."""
        self._probes.gate = check

    def add_refresh(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before every scrape of ``/metrics``, to set gauges that describe
        the present (the daemon's spool size and age); it must be quick."""
        self._probes.refreshers.append(refresh)

    def health(self) -> Report:
        """The health report ``/healthz`` serves: the supervisor's own problems (its loop,
        the lease broker) and those of whatever else was added to :attr:`health_checks`.

        A program embedding the supervisor (the daemon, for its systemd watchdog and
        ``STATUS=``) asks this, and adds its own components with ``health_checks.add``.
        """
        return self.health_checks.check()

    def problems(self) -> list[str]:
        """The supervisor's own problems; each means a restart is needed (failing)."""
        return self._probes.problems()

    @property
    def metrics_url(self) -> str | None:
        return f"{self.endpoint.url}/metrics" if self.endpoint is not None else None

    def _serve_metrics(self, opts: SupervisorOptions) -> MetricsEndpoint:
        observer = self.metrics.http_endpoint("metrics")
        try:
            endpoint = MetricsEndpoint(
                self.registry,
                host=opts.metrics_host,
                port=opts.metrics_port or 0,
                limits=opts.metrics_limits,
                refresh=self._probes.refresh,
                healthy=self._probes.healthy,
                ready=self._probes.ready,
                on_refusal=observer.on_refusal,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {opts.metrics_host}:{opts.metrics_port}: {exc}",
                key="metrics_port",
                value=opts.metrics_port,
                expected="a free port on metrics_host (0 picks one)",
            ) from exc
        observer.connections = lambda: endpoint.connections
        self.add_refresh(observer.refresh)
        return endpoint
