"""Settings changed while a supervisor runs: :meth:`Supervisor.reconfigure` and SIGHUP.

:class:`Reconfiguring` is part of :class:`~chworkers.workers.arbiter.Arbiter`, whose loop
calls it (a ``Reconfigure`` command, a SIGHUP): it applies what changed to the queue, the
lease broker, the crew and the memory files, and logs each change old -> new.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from chworkers.clickhouse.lease import LeaseBroker
from chworkers.clickhouse.retry import RetryPolicy
from chworkers.clickhouse.shardleases import ShardLeaseBrokers
from chworkers.ops.metrics import Metrics
from chworkers.settings import render_changes
from chworkers.workers import sharedbuf
from chworkers.workers.crew import Crew
from chworkers.workers.options import SupervisorOptions
from chworkers.workers.taskqueue import TaskQueue

__all__ = ["Reconfiguring"]

#: The arbiter's logger, as before this part moved here (log filters keep working).
log = logging.getLogger("chworkers.workers.arbiter")


class Reconfiguring:
    """The arbiter's reconfiguration (see the module's docstring)."""

    _options: SupervisorOptions
    _retry: RetryPolicy
    _crew: Crew | None
    _on_reload: Callable[[], Mapping[str, Any]] | None
    queue: TaskQueue
    metrics: Metrics
    broker: LeaseBroker | ShardLeaseBrokers | None

    def _reload(self) -> None:
        if self._on_reload is None:
            log.info("no on_reload callback: nothing to reload")
            return
        try:
            self._reconfigure(dict(self._on_reload()))
        except Exception:
            log.exception("reload failed; keeping the current settings")

    def _reconfigure(self, changes: Mapping[str, Any]) -> None:
        before, retry_before = self._options, self._retry
        self._options, retry = self._options.reconfigured(changes)
        if retry is not None:
            self._retry = retry
            if self._crew is not None:
                self._crew.configure({"retry": retry})
        if "kept_memory_files_bytes" in changes:
            sharedbuf.configure(self._options.kept_memory_files_bytes)
        if "max_worker_memory" in changes and self._crew is not None:
            self._crew.configure({"max_worker_memory": self._options.max_worker_memory})
        if "queue_size" in changes:
            self.queue.resize(self._options.queue_size)
            self.metrics.queue_capacity.set(self._options.queue_size)
        if self.broker is not None and self._options.connections != before.connections:
            self.broker.resize(self._options.connections)
        stopped_scaling = before.autoscaling and not self._options.autoscaling
        if (self._options.workers != before.workers or stopped_scaling) and self._crew:
            # (An unchanged count, as a reload passes, leaves the autoscaled one alone;
            # new autoscaling bounds apply at its next look.)
            self._crew.scale(self._options.initial_workers)
        changed = render_changes(before, self._options)
        if retry is not None:
            changed += render_changes(retry_before, retry, "retry.")
        if changed:
            log.info("settings now: %s", ", ".join(changed))
        else:
            log.debug("settings unchanged")
