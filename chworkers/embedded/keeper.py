"""Keeping the daemon's embedded ClickHouse child alive: notice, restart, count, report.

With ``url = "embedded"`` the daemon's ClickHouse is a child process
(:class:`~chworkers.embedded.process.EmbeddedClickHouse`). If it dies (killed by the OOM
killer, a crash in chDB, a stray ``kill``), nothing would be inserted again until
someone restarted it by hand, while the daemon went on spooling and saying it was fine.
A :class:`Keeper` watches it from a thread: it notices the death within ``poll``
seconds, logs it with the child's last log lines, starts it again on the same data
directory and the same port (so the workers' URL stays valid and their retries simply
succeed once it is back), with a backoff that grows while starts keep failing, counts
each restart in ``chworkers_embedded_restarts_total`` and reports the outage through
:meth:`problems` until the child serves again. The first start happens the same way, in
the background, so that the daemon's intake does not wait for it.
"""

from __future__ import annotations

import logging
import threading
import time

from chworkers.backoff import capped_backoff
from chworkers.embedded.process import EmbeddedClickHouse
from chworkers.ops.metrics import Metrics

__all__ = ["Keeper"]

log = logging.getLogger(__name__)


class Keeper:
    """Starts ``endpoint`` and restarts it whenever it dies, until :meth:`stop`.

    Restarts wait ``initial_backoff`` seconds, doubling up to ``max_backoff`` while
    starts fail or the child dies young; a child that stayed up for ``stable_after``
    seconds starts the backoff afresh.
    """

    def __init__(
        self,
        endpoint: EmbeddedClickHouse,
        *,
        metrics: Metrics | None = None,
        poll: float = 0.2,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self.poll = poll
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._down_since: float | None = time.monotonic()
        self._why: str = "starting"
        self._thread = threading.Thread(
            target=self._run, name="chworkers-embedded-keeper", daemon=True
        )
        if metrics is not None:
            metrics.embedded_up.set(0)

    def __repr__(self) -> str:
        state = "up" if self._up.is_set() else f"down ({self._why})"
        return f"<Keeper {self.endpoint.url} {state}, {self.restarts} restarts>"

    def attach_metrics(self, metrics: Metrics) -> None:
        """Report to ``metrics`` from now on (the registry may exist only after start)."""
        self.metrics = metrics
        metrics.embedded_up.set(1 if self._up.is_set() else 0)

    def start(self) -> None:
        self._thread.start()

    def wait_up(self, timeout: float | None = None) -> bool:
        """Until the child serves (True) or ``timeout`` passes (False)."""
        return self._up.wait(timeout)

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called: the child will not serve again."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop watching, then stop the child (after a start in progress has finished)."""
        self._stop.set()  # also cancels a start in progress
        if self._thread.is_alive():
            self._thread.join(self.endpoint.startup_timeout + 10)
        self.endpoint.close()
        self._set_up(False, "stopped")

    def problems(self) -> list[str]:
        """The child is not serving: since when and why (for health)."""
        with self._lock:
            since, why = self._down_since, self._why
        if since is None or self._stop.is_set() or why == "starting":
            return []  # up, stopped, or its first start still going on (no failure yet)
        return [
            f"the embedded ClickHouse is down for {time.monotonic() - since:.0f} s ({why}); "
            f"batches wait in the spool ({self.restarts} restarts so far)"
        ]

    def _set_up(self, up: bool, why: str = "") -> None:
        with self._lock:
            if up:
                self._down_since = None
            elif self._down_since is None:
                self._down_since = time.monotonic()
            self._why = why
        if up:
            self._up.set()
        else:
            self._up.clear()
        if self.metrics is not None:
            self.metrics.embedded_up.set(1 if up else 0)

    def _run(self) -> None:
        failures = 0  # starts that failed, or children that died young, in a row
        first = True
        while not self._stop.is_set():
            if failures:
                delay = capped_backoff(self.initial_backoff, failures, self.max_backoff)
                if self._stop.wait(delay):
                    return
            try:
                self.endpoint.start(cancel=self._stop)
            except Exception as exc:
                if self._stop.is_set():
                    return
                failures += 1
                self._set_up(False, f"start {failures} failed: {exc}")
                log.error(
                    "embedded ClickHouse did not start (attempt %d; next in %.1f s): %s",
                    failures,
                    capped_backoff(self.initial_backoff, failures, self.max_backoff),
                    exc,
                )
                continue
            started = time.monotonic()
            if not first:
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.embedded_restarts.inc()
                log.warning(
                    "embedded ClickHouse restarted (pid %s, restart %d)",
                    self.endpoint.pid,
                    self.restarts,
                )
            first = False
            self._set_up(True)
            while not self._stop.wait(self.poll) and self.endpoint.running:
                pass
            if self._stop.is_set():
                return
            status = self.endpoint.exit_status or "exited"
            lived = time.monotonic() - started
            failures = 0 if lived >= self.stable_after else failures + 1
            self._set_up(False, f"the child {status}")
            log.error(
                "embedded ClickHouse (%s) died: %s after %.0f s; restarting it on the same "
                "data directory and port. Its last log lines:\n%s",
                self.endpoint.url,
                status,
                lived,
                self._tail(),
            )

    def _tail(self) -> str:
        try:
            return self.endpoint.tail()
        except OSError as exc:
            return f"(cannot read its log: {exc})"
