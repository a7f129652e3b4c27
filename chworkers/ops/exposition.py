"""The supervisor's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by a bounded threaded HTTP server (:mod:`chworkers.http.server`: a sized backlog,
at most ``limits.max_connections`` clients at once, idle and slow clients timed out) on
its own thread, on 127.0.0.1 by default (port 0 picks a free port). ``/metrics`` renders the supervisor's registry in the format
the scraper asks for (Prometheus text or OpenMetrics); gauges that describe the present
(queue depth, workers by state, pool occupancy) are refreshed just before. The health
endpoints answer 200 or 503 with a small JSON body saying why.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from chworkers.errors import HttpRequestError
from chworkers.http.limits import HttpLimits
from chworkers.http.server import BoundedHandler, BoundedHTTPServer

log = logging.getLogger(__name__)

#: A health check: (healthy, details for the JSON body).
Check = Callable[[], tuple[bool, dict[str, Any]]]


class _Server(BoundedHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        endpoint: MetricsEndpoint,
        limits: HttpLimits,
        on_refusal: Callable[[str], None] | None,
    ) -> None:
        super().__init__(address, _Handler, limits, on_refusal=on_refusal)
        self.endpoint = endpoint


class _Handler(BoundedHandler):
    server: _Server
    #: Scrapes and probes send no body; a small one is read and ignored.
    max_body_bytes = 64 * 1024

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        try:
            self.read_body()
        except HttpRequestError as exc:
            self.refuse(exc.status, exc.message, exc.headers)
            return
        try:
            if path == "/metrics":
                endpoint.refresh()
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self.reply(200, encoder(endpoint.registry), content_type)
            elif path in ("/healthz", "/readyz"):
                check = endpoint.healthy if path == "/healthz" else endpoint.ready
                ok, details = check()
                body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                self.reply(200 if ok else 503, body, "application/json")
            else:
                self.reply(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
        except Exception:
            log.exception("error serving %s", path)
            self.reply(500, b"internal error\n", "text/plain")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsEndpoint:
    """Serves a registry and two health checks over HTTP until :meth:`close`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        refresh: Callable[[], None] = lambda: None,
        healthy: Check = lambda: (True, {}),
        ready: Check = lambda: (True, {}),
        limits: HttpLimits | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh = refresh
        self.healthy = healthy
        self.ready = ready
        self.limits = limits or HttpLimits()
        self._server = _Server((host, port), self, self.limits, on_refusal)
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="chworkers-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._server.active

    def fileno(self) -> int:
        return self._server.fileno()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
