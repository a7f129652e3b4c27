"""Choosing among several ClickHouse hosts (replicas): spread, cool down, re-probe.

New connections go to the healthy host with the fewest live connections (ties broken in
turn), which spreads load. A host that fails with a connection error or a gateway 5xx is
marked down for a cooldown that doubles with each consecutive failure (up to a maximum);
once its cooldown has passed it is eligible again, and the next connection to it is the
probe: success makes it healthy, failure sends it back down for longer. When every host is
down, the one due back soonest is returned, and the caller's retry policy decides what to
do with the failure that follows.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chworkers.backoff import capped_backoff
from chworkers.clickhouse.dsn import Host
from chworkers.clickhouse.pooloptions import PoolOptions
from chworkers.errors import ConnectError, ConnectionLostError, ServerError

__all__ = ["HostSelector", "HostState", "is_host_failure"]

log = logging.getLogger(__name__)


def is_host_failure(err: BaseException) -> bool:
    """Whether ``err`` says the host is unhealthy: unreachable, reset, or a gateway 5xx
    (not, e.g., a wrong password or a bad query: the host itself is fine then)."""
    if isinstance(err, ConnectError | ConnectionLostError):
        return True
    return isinstance(err, ServerError) and err.code is None and (err.http_status or 0) >= 502


@dataclass
class HostState:
    host: Host
    connections: int = 0
    failures: int = 0
    down_until: float = 0.0
    last_error: str | None = None

    def down(self, now: float) -> bool:
        return now < self.down_until


class HostSelector:
    """Thread-safe bookkeeping of the hosts' health and load.

    Of the pool's ``options`` (the defaults when not given) it reads ``host_cooldown``
    and ``max_host_cooldown``.
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        options: PoolOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = options or PoolOptions()
        self._states = {h: HostState(h) for h in hosts}
        self._order = list(self._states)
        self._turn = itertools.count()
        self._cooldown = options.host_cooldown
        self._max_cooldown = max(options.host_cooldown, options.max_host_cooldown)
        self._clock = clock
        self._lock = threading.Lock()

    def choose(self) -> Host:
        """The host for the next new connection."""
        now = self._clock()
        with self._lock:
            states = [self._states[h] for h in self._order]
            up = [s for s in states if not s.down(now)]
            if not up:
                return min(states, key=lambda s: s.down_until).host
            turn = next(self._turn)
            n = len(self._order)
            best = min(up, key=lambda s: (s.connections, (self._order.index(s.host) - turn) % n))
            return best.host

    def is_down(self, host: Host) -> bool:
        with self._lock:
            state = self._states.get(host)
            return state is not None and state.down(self._clock())

    def opened(self, host: Host) -> None:
        with self._lock:
            self._states[host].connections += 1

    def closed(self, host: Host) -> None:
        with self._lock:
            state = self._states[host]
            state.connections = max(0, state.connections - 1)

    def report_failure(self, host: Host, error: BaseException | None = None) -> None:
        """Mark ``host`` down for its (growing) cooldown."""
        with self._lock:
            state = self._states[host]
            state.failures += 1
            delay = capped_backoff(self._cooldown, state.failures, self._max_cooldown)
            state.down_until = self._clock() + delay
            state.last_error = None if error is None else f"{type(error).__name__}: {error}"
            failures = state.failures
        log.warning(
            "ClickHouse host %s marked down for %.1f s after %d failure(s): %s",
            host,
            delay,
            failures,
            error,
        )

    def report_success(self, host: Host) -> None:
        with self._lock:
            state = self._states[host]
            was_down = state.failures > 0
            state.failures = 0
            state.down_until = 0.0
            state.last_error = None
        if was_down:
            log.info("ClickHouse host %s is back", host)

    def due_for_probe(self) -> list[Host]:
        """Hosts that failed and whose cooldown has passed (to re-probe now)."""
        now = self._clock()
        with self._lock:
            return [s.host for s in self._states.values() if s.failures and not s.down(now)]

    def probe(self, connect: Callable[[Host], object], stopped: Callable[[], bool]) -> None:
        """Re-probe the hosts :meth:`due_for_probe` with ``connect(host)``, until
        ``stopped()``: a host that answers (if only with an error) is back."""
        for host in self.due_for_probe():
            if stopped():
                return
            try:
                connect(host)
            except Exception as exc:
                if is_host_failure(exc):
                    self.report_failure(host, exc)
                    continue
            self.report_success(host)

    def snapshot(self) -> list[dict[str, object]]:
        now = self._clock()
        with self._lock:
            return [
                {
                    "host": str(s.host),
                    "up": not s.down(now),
                    "connections": s.connections,
                    "failures": s.failures,
                    "down_for": max(0.0, s.down_until - now),
                    "last_error": s.last_error,
                }
                for s in self._states.values()
            ]
