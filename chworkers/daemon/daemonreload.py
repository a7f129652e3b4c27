"""What the daemon does on SIGHUP (read the configuration file again and apply what can
change at runtime) and SIGUSR2 (replace the workers one at a time).

:class:`DaemonReload` is part of :class:`~chworkers.daemon.service.Daemon`, whose loop
calls these when the signal arrives; which settings SIGHUP applies is
:mod:`chworkers.daemon.reload`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from chworkers.daemon.daemonstart import DaemonStart
from chworkers.errors import ChworkersError
from chworkers.settings import render_changes
from chworkers.workers.options import SupervisorOptions

__all__ = ["DaemonReload"]

#: The daemon's logger, as before it was cut into modules (log filters keep working).
log = logging.getLogger("chworkers.daemon.service")


class DaemonReload(DaemonStart):
    """The daemon's SIGHUP and SIGUSR2 (see the module's docstring)."""

    def _reload(self) -> None:
        from chworkers.daemon import config as config_module
        from chworkers.daemon import reload

        # Batches held back (a permanent error, an outage) get their next try now: the
        # operator may have just fixed the table or the password.
        self.dispatcher.retry_now()
        self.tables.retry_now()
        if self.splitter is not None:
            self.splitter.retry_now()
        if self.config.source == "defaults":
            log.info("SIGHUP: no config file to reload")
            return
        try:
            new = config_module.load(self.config.source, overrides=self.config.overrides)
            # What it will run with: only what SIGHUP applies; the rest waits for a restart.
            applied = reload.reloaded_config(self.config, new)
        except ChworkersError as exc:
            log.error("SIGHUP: keeping the running configuration: %s", exc)
            return
        s = new.settings
        changes: dict[str, Any] = {
            name: getattr(s.supervisor, name)
            for name in SupervisorOptions.reloadable() - {"max_connections"}
        }
        self.supervisor.reconfigure(
            **changes,
            max_connections=s.clickhouse.pool.max_connections,
            retry=s.clickhouse.pool.retry,
        )
        self.dispatcher.resize(s.supervisor.worker_bounds[1])
        self._reload_log_level(s.log.level)
        before, self.config = self.config, applied
        fixed = reload.restart_only_changes(self._started_config, new)
        if fixed:
            # Old -> new where the key is a setting; a pipeline by its name.
            said = {
                line.split(" ", 1)[0]: line
                for line in render_changes(self._started_config.settings, new.settings)
            }
            log.warning(
                "SIGHUP: these changes in %s take effect only on restart (running on with "
                "the values it started with): %s",
                new.source,
                ", ".join(said.get(key, key) for key in fixed),
            )
        changed = render_changes(before.settings, applied.settings)
        log.info(
            "SIGHUP: reloaded %s: %s",
            new.source,
            ", ".join(changed) if changed else "no setting it applies changed",
        )

    def _restart_workers(self) -> None:
        # Intake and the spool go on; the supervisor replaces one worker at a time.
        try:
            self.supervisor.restart_workers(wait=False)
        except ChworkersError as exc:
            log.error("SIGUSR2: no rolling restart: %s", exc)
        else:
            log.info("SIGUSR2: replacing the workers one at a time")

    def _reload_log_level(self, level: str) -> None:
        if "log.level" in self.config.overrides:  # the command line wins over the file
            log.info("SIGHUP: log level stays %s (set by --log-level)", level)
            return
        if level == self.config.settings.log.level:
            return
        logging.getLogger().setLevel(level)
        self.supervisor.sync_log_levels()
        if self.embedded is not None:  # the child takes it at its next start
            self.embedded.endpoint.log_level = level
        log.info("SIGHUP: log level now %s", level)
