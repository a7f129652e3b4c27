"""What the daemon says about itself: its health (``/healthz``, systemd's watchdog),
the ``STATUS=`` line and the summary at the end of a run.

:class:`DaemonHealth` is part of :class:`~chworkers.daemon.service.Daemon`: it registers
the daemon's components with the supervisor's health checks (see
:mod:`chworkers.ops.health` for what the levels mean).
"""

from __future__ import annotations

from chworkers.daemon.daemonstart import DaemonStart
from chworkers.ops.health import Level, Report

__all__ = ["DISPATCH_STUCK_AFTER", "LOOP_STALE_AFTER", "DaemonHealth"]

#: The daemon's loop turns every half second; silent this long, it counts as stuck.
LOOP_STALE_AFTER = 10.0
#: The dispatcher hands a batch to the workers in moments; this long in one, it is stuck.
DISPATCH_STUCK_AFTER = 60.0


class DaemonHealth(DaemonStart):
    """The daemon's health and status (see the module's docstring)."""

    def _watch_health(self) -> None:
        """Register the daemon's components with the supervisor's health (see
        :mod:`chworkers.ops.health` for what the levels mean)."""
        health = self.supervisor.health_checks
        health.add("daemon", self._own_problems, Level.FAILING)
        health.add("dispatcher", self.dispatcher)  # e.g. permanent insert errors
        health.add("spool", self.spool)
        health.add("batcher", self.batcher)
        health.add("positions", self.checkpoints)  # file positions that could not be saved
        health.add("inserts", self._stall)
        health.add("tables", self.tables)
        if self.splitter is not None and self.shard_stats is not None:
            health.add("shards", self.shard_stats)  # a shard holding its parts back
            health.add("split", self.splitter)  # batches waiting for their columns
        if self.embedded is not None:
            health.add("embedded ClickHouse", self.embedded)

    def _own_problems(self) -> list[str]:
        """What a restart fixes: this loop stuck, a source or the dispatcher dead or hung."""
        out = []
        if not self._heartbeat.fresh(LOOP_STALE_AFTER):
            out.append(f"the daemon's loop has not turned for {self._heartbeat.age():.0f} s")
        out.extend(self.intake.problems())
        out.extend(self.dispatcher.thread_problems(DISPATCH_STUCK_AFTER))
        return out

    def _backlog(self) -> int:
        """Batches not confirmed yet: with the dispatcher, or waiting for their table."""
        waiting = 0 if self.splitter is None else self.splitter.waiting()
        return self.dispatcher.backlog() + self.tables.held() + waiting

    def health(self) -> Report:
        """The daemon's health now (what ``/healthz`` serves)."""
        return self.supervisor.health()

    def _healthy(self) -> bool:
        """For systemd's watchdog: ping unless the daemon is failing. A ClickHouse outage
        is only 'degraded' (restarting would not help), so the pings go on."""
        return self.supervisor.health().alive

    def _status(self) -> str:
        spool = self.spool.stats() if hasattr(self, "spool") else {"batches": 0, "bytes": 0}
        backlog = self._backlog() if hasattr(self, "tables") else 0
        report = self._report
        with self._lock:
            status = self.totals.status(
                backlog, spool_batches=int(spool["batches"]), spool_bytes=int(spool["bytes"])
            )
        if self.shard_stats is not None:  # each shard's backlog: "shards 0/12/0"
            status += f" | {self.shard_stats.status()}"
        return status if report.level is Level.OK else f"{report.summary()} | {status}"

    def summary(self) -> str:
        stats = self.spool.stats()
        in_memory = int(stats["memory_batches"])  # a broker's: not on disk
        return self.totals.summary(self.state_dir, int(stats["batches"]) - in_memory, in_memory)
