"""The supervisor's control surface: commands its loop runs, stats, health, reload.

:class:`SupervisorControl` holds what other threads ask of a running supervisor: they
queue a command (``Arbiter.command``) and the loop runs the matching ``_cmd_*`` method
here, so everything about the workers is still read and written on one thread. Signals
arrive the same way. The HTTP endpoint's callbacks (``/metrics`` refresh, ``/healthz``,
``/readyz``) live here too.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chworkers.clickhouse.retry import RetryPolicy
from chworkers.errors import ConfigError, SupervisorStoppedError
from chworkers.ops import workerlogs
from chworkers.ops.health import Health, Report
from chworkers.ops.metrics import Metrics
from chworkers.workers.options import SupervisorOptions

if TYPE_CHECKING:
    from chworkers.clickhouse.lease import LeaseBroker
    from chworkers.workers.arbiter import Arbiter
    from chworkers.workers.outcomes import Outcomes
    from chworkers.workers.taskqueue import TaskQueue

log = logging.getLogger(__name__)

#: The supervisor's loop turns several times a second; silent this long, it is stuck.
LOOP_STALE_AFTER = 10.0


@dataclass(frozen=True)
class SupervisorStats:
    """A snapshot of the supervisor (see :meth:`Supervisor.stats`)."""

    state: str
    workers: tuple[dict[str, Any], ...]
    queued: int
    queue_capacity: int
    in_flight: int
    outstanding: int
    tasks: Mapping[str, int]
    restarts: Mapping[str, int]
    pool: Any = None


class SupervisorControl:
    """Commands and checks of :class:`~chworkers.workers.supervisor.Supervisor` (a mixin)."""

    options: SupervisorOptions
    retry: RetryPolicy
    metrics: Metrics
    queue: TaskQueue
    outcomes: Outcomes
    broker: LeaseBroker | None
    state: str
    on_reload: Callable[[], Mapping[str, Any]] | None
    health_checks: Health
    _arbiter: Arbiter | None
    _refreshers: list[Callable[[], None]]

    @property
    def error(self) -> BaseException | None:
        """Why the supervisor gave up, when it did (e.g. :class:`WorkerBootError`)."""
        return self._arbiter.error if self._arbiter is not None else None

    def _command(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError

    # Commands, run by the loop (see Arbiter._handle).

    def _cmd_stop(self, arb: Arbiter, graceful: bool, timeout: float | None) -> None:
        arb.begin_stop(graceful, timeout)

    def _cmd_signal(self, arb: Arbiter, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("%s: reloading settings", name)
            self._reload(arb)
        elif arb.mode is None:
            log.info("%s: draining within %s s, then stopping", name, self.options.graceful_timeout)
            arb.begin_stop(True, None)
        else:
            log.info("%s again: stopping now", name)
            arb.begin_stop(False, None)

    def _reload(self, arb: Arbiter) -> None:
        if self.on_reload is None:
            log.info("no on_reload callback: nothing to reload")
            return
        try:
            changes = dict(self.on_reload())
            self._cmd_reconfigure(arb, changes)
        except Exception:
            log.exception("reload failed; keeping the current settings")

    def _cmd_reconfigure(self, arb: Arbiter, changes: dict[str, Any]) -> None:
        changes = dict(changes)
        retry = changes.pop("retry", None)
        if retry is not None:
            retry = RetryPolicy.coerce(retry)
        fixed = set(changes) - SupervisorOptions.reloadable()
        if fixed:
            key = sorted(fixed)[0]
            raise ConfigError(
                f"setting {key!r} cannot change while running; restart instead",
                key=key,
                value=changes[key],
                expected="one of " + ", ".join(sorted(SupervisorOptions.reloadable())),
            )
        self.options = arb.opts = SupervisorOptions.build(changes, base=self.options)
        if retry is not None:
            self.retry = arb.worker_settings["retry"] = retry
            for h in list(arb.workers.values()):
                if h.state == "ready":
                    arb.send(h, "configure", {"retry": retry})
        if "queue_size" in changes:
            self.queue.resize(self.options.queue_size)
            self.metrics.queue_capacity.set(self.options.queue_size)
        if self.broker is not None and ("max_connections" in changes or "workers" in changes):
            self.broker.resize(self.options.connections)
        if "workers" in changes:
            arb.scale(self.options.workers)
        log.info("settings now: %s", {**changes, **({"retry": retry} if retry else {})})

    def _cmd_stats(self, arb: Arbiter) -> SupervisorStats:
        return self._stats(arb)

    def _stats(self, arb: Arbiter | None) -> SupervisorStats:
        return SupervisorStats(
            state=self.state,
            workers=tuple(arb.snapshot()) if arb else (),
            queued=len(self.queue),
            queue_capacity=self.queue.maxsize,
            in_flight=arb.in_flight() if arb else 0,
            outstanding=self.outcomes.outstanding,
            tasks=dict(self.outcomes.counts),
            restarts=dict(self.outcomes.restarts),
            pool=self.broker.stats() if self.broker is not None and arb else None,
        )

    def _cmd_refresh(self, arb: Arbiter) -> None:
        # The loop owns the workers' table: their states are read here, on its thread.
        m = self.metrics
        states = Counter(h.public_state() for h in arb.workers.values())
        for state in ("starting", "idle", "busy", "stopping"):
            m.workers.labels(state).set(states[state])
        m.pool_idle.set(sum(h.gauges.get("pool_idle", 0.0) for h in arb.workers.values()))

    def _cmd_log_levels(self, arb: Arbiter) -> None:
        levels = workerlogs.levels()
        for h in list(arb.workers.values()):
            if h.state == "ready":
                arb.send(h, "configure", {"log_levels": levels})

    def sync_log_levels(self) -> None:
        """Copy this process's log levels into the running workers, after changing them
        (the daemon does on SIGHUP); workers started later copy them when they start."""
        self._command("log_levels")

    def add_refresh(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before every scrape of ``/metrics``, to set gauges that describe
        the present (the daemon's spool size and age); it must be quick."""
        self._refreshers.append(refresh)

    def health(self) -> Report:
        """The health report ``/healthz`` serves: the supervisor's own problems (its loop,
        the lease broker) and those of whatever else was added to :attr:`health`.

        A program embedding the supervisor (the daemon, for its systemd watchdog and
        ``STATUS=``) asks this, and adds its own components with ``health.add``.
        """
        return self.health_checks.check()

    def problems(self) -> list[str]:
        """The supervisor's own problems; each means a restart is needed (failing)."""
        arb = self._arbiter
        if arb is None:
            return []  # not started yet: nothing can be wrong with it
        if arb.finished.is_set():
            error = self.error
            return [f"the supervisor is {self.state}" + (f": {error}" if error else "")]
        out = []
        stalled = time.monotonic() - arb.loop_beat
        if stalled > LOOP_STALE_AFTER:
            out.append(f"the supervisor's loop has not turned for {stalled:.0f} s")
        if self.broker is not None and self.state == "running":
            out.extend(self.broker.problems())
        return out

    # HTTP endpoint callbacks (on its threads).

    def _refresh(self) -> None:
        """Gauges of state, read when scraped: a gauge set only when something happens
        freezes while nothing happens (a spool's age during an outage with no new data)."""
        m = self.metrics
        m.queue_depth.set(len(self.queue))
        if self.broker is not None:
            st = self.broker.stats()
            m.pool_in_use.set(st.in_use)
            m.pool_max.set(st.capacity)
            m.pool_waiting.set(st.waiting)
        for refresh in list(self._refreshers):
            try:
                refresh()
            except Exception:
                log.exception("refreshing metrics failed in %r", refresh)
        with contextlib.suppress(TimeoutError, SupervisorStoppedError):
            self._command("refresh", timeout=2.0)
        self.health_checks.check()  # the health gauges, as of this scrape

    def _healthy(self) -> tuple[bool, dict[str, Any]]:
        report = self.health_checks.check()
        return report.alive, {**report.as_dict(), "state": self.state}

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        arb = self._arbiter
        if arb is None or arb.finished.is_set() or arb.mode is not None:
            return False, {"reason": f"supervisor {arb.mode if arb and arb.mode else self.state}"}
        report = self.health_checks.check()
        if not report.alive:
            return False, {"reason": report.summary(), **report.as_dict()}
        ready = sum(1 for h in list(arb.workers.values()) if h.state == "ready")
        if not ready:
            return False, {"reason": "no worker ready"}
        return True, {"workers_ready": ready, "queued": len(self.queue)}
