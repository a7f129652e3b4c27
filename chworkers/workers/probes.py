"""What the supervisor's HTTP endpoint asks: gauges to refresh, health, readiness.

:class:`Probes` answers ``/metrics`` (refreshing the gauges that describe the present
before each scrape), ``/healthz`` and ``/readyz`` from the endpoint's threads. It reads
what the :class:`~chworkers.workers.arbiter.Arbiter` publishes and asks its loop for the
rest (the workers' gauges), with a time limit, so that a stuck loop shows up as a problem
instead of a hung scrape.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from chworkers.errors import SupervisorStoppedError
from chworkers.ops.health import Health
from chworkers.ops.metrics import Metrics
from chworkers.workers.arbiter import Arbiter
from chworkers.workers.commands import RefreshGauges

log = logging.getLogger(__name__)

#: The supervisor's loop turns several times a second; silent this long, it is stuck.
LOOP_STALE_AFTER = 10.0


class Probes:
    def __init__(self, owner: Arbiter, metrics: Metrics, health: Health) -> None:
        self.owner = owner
        self.metrics = metrics
        self.health = health
        self.refreshers: list[Callable[[], None]] = []
        #: What readiness waits for besides the supervisor running and healthy: None
        #: for a ready worker; else a check returning None when ready, or why not.
        self.gate: Callable[[], str | None] | None = None

    def problems(self) -> list[str]:
        """The supervisor's own problems; each means a restart is needed (failing)."""
        owner = self.owner
        if not owner.started:
            return []  # not started yet: nothing can be wrong with it
        if owner.finished.is_set():
            error = owner.error
            return [f"the supervisor is {owner.state}" + (f": {error}" if error else "")]
        out = []
        stalled = time.monotonic() - owner.loop_beat
        if stalled > LOOP_STALE_AFTER:
            out.append(f"the supervisor's loop has not turned for {stalled:.0f} s")
        broker = owner.broker
        if broker is not None and owner.state == "running":
            out.extend(broker.problems())
        return out

    def refresh(self) -> None:
        """Gauges of state, read when scraped: a gauge set only when something happens
        freezes while nothing happens (a spool's age during an outage with no new data)."""
        m = self.metrics
        m.queue_depth.set(len(self.owner.queue))
        broker = self.owner.broker
        if broker is not None:
            st = broker.stats()
            m.pool_in_use.set(st.in_use)
            m.pool_max.set(st.capacity)
            m.pool_waiting.set(st.waiting)
        for refresh in list(self.refreshers):
            try:
                refresh()
            except Exception:
                log.exception("refreshing metrics failed in %r", refresh)
        with contextlib.suppress(TimeoutError, SupervisorStoppedError):
            self.owner.ask(RefreshGauges(), timeout=2.0)
        self.health.check()  # the health gauges, as of this scrape

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        report = self.health.check()
        return report.alive, {**report.as_dict(), "state": self.owner.state}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        owner = self.owner
        if not owner.started or owner.finished.is_set() or owner.mode is not None:
            return False, {"reason": f"supervisor {owner.mode or owner.state}"}
        report = self.health.check()
        if not report.alive:
            return False, {"reason": report.summary(), **report.as_dict()}
        ready = owner.worker_count("ready")
        why = (None if ready else "no worker ready") if self.gate is None else self.gate()
        if why is not None:
            return False, {"reason": why, "workers_ready": ready}
        return True, {"workers_ready": ready, "queued": len(owner.queue)}
