"""Counters the endpoint keeps about itself, served as JSON on ``GET /embedded/stats``.

Not part of ClickHouse's interface: they let tests and operators see what clients do to
the endpoint, above all how many query requests run at once (``max_requests_in_flight``
since the last reset), which is how a test proves that workers never exceed their
connection budget.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, fields

PATH = "/embedded/stats"


@dataclass
class EndpointStats:
    """Thread-safe counters; every query request (``/``) counts, health checks do not."""

    requests_total: int = 0
    requests_in_flight: int = 0
    max_requests_in_flight: int = 0
    errors_total: int = 0
    connections_open: int = 0
    connections_total: int = 0
    inserted_rows_total: int = 0
    inserted_bytes_total: int = 0
    connections_refused_total: int = 0
    timeouts_total: int = 0
    chdb_connections_opened_total: int = 0
    async_inserts_total: int = 0
    async_flushes_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request_started(self) -> None:
        with self._lock:
            self.requests_total += 1
            self.requests_in_flight += 1
            self.max_requests_in_flight = max(self.max_requests_in_flight, self.requests_in_flight)

    def request_ended(self, failed: bool) -> None:
        with self._lock:
            self.requests_in_flight -= 1
            if failed:
                self.errors_total += 1

    def connection_opened(self) -> None:
        with self._lock:
            self.connections_open += 1
            self.connections_total += 1

    def connection_closed(self) -> None:
        with self._lock:
            self.connections_open -= 1

    def connection_refused(self) -> None:
        """A connection beyond max_connections, answered 503."""
        with self._lock:
            self.connections_refused_total += 1

    def timed_out(self) -> None:
        """A client cut off for sending its request head or body too slowly."""
        with self._lock:
            self.timeouts_total += 1

    def chdb_connection_opened(self) -> None:
        """A chDB connection opened (for a session, or the pool had none idle)."""
        with self._lock:
            self.chdb_connections_opened_total += 1

    def async_queued(self) -> None:
        """An insert went into the asynchronous insert queue."""
        with self._lock:
            self.async_inserts_total += 1

    def async_flushed(self) -> None:
        """A batch of the asynchronous insert queue was written (or failed)."""
        with self._lock:
            self.async_flushes_total += 1

    def inserted(self, rows: int, nbytes: int) -> None:
        with self._lock:
            self.inserted_rows_total += rows
            self.inserted_bytes_total += nbytes

    def snapshot(self, reset: bool = False) -> dict[str, int]:
        """The counters; ``reset`` restarts the in-flight maximum from now."""
        with self._lock:
            values = {f.name: getattr(self, f.name) for f in fields(self) if f.name[0] != "_"}
            if reset:
                self.max_requests_in_flight = self.requests_in_flight
        return values

    def to_json(self, reset: bool = False) -> bytes:
        return json.dumps(self.snapshot(reset), sort_keys=True).encode() + b"\n"
