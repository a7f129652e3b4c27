"""The daemon's own ClickHouse when ``url = "embedded"``: a child process, kept alive.

:func:`start_embedded` starts the embedded endpoint (:mod:`chworkers.embedded`) as a
child on the state directory, watched and restarted by its
:class:`~chworkers.embedded.keeper.Keeper`. Its port is fixed before the first start
(:func:`~chworkers.freeport.free_port` when none is configured), so the workers' URL is known at once and
stays valid across restarts of the child. :func:`once_serving` runs what would only
knock on a closed port (the dispatcher, the table creator) once the child serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from chworkers.daemon.clickhousesettings import ClickHouseSettings
from chworkers.freeport import free_port
from chworkers.ops.logs import LogSettings

if TYPE_CHECKING:
    from chworkers.embedded.keeper import Keeper

__all__ = ["once_serving", "start_embedded"]

logger = logging.getLogger(__name__)


def start_embedded(ch: ClickHouseSettings, state_dir: Path, log: LogSettings) -> Keeper:
    """Start the embedded ClickHouse child (in the background) and its keeper; the child
    logs (to ``clickhouse.log``) at the daemon's ``[log]`` level and in its format."""
    from chworkers.embedded.keeper import Keeper  # only a daemon that embeds loads chDB

    endpoint = ch.embedded_endpoint(
        state_dir / "clickhouse",
        port=ch.embedded.port or free_port(ch.embedded.host),
        log_path=state_dir / "clickhouse.log",
        log_level=log.level,
        log_format=log.format,
    )
    keeper = Keeper(endpoint)
    keeper.start()
    logger.info("embedded ClickHouse at %s (data in %s)", endpoint.url, endpoint.path)
    return keeper


def once_serving(keeper: Keeper | None, start: Callable[[], None]) -> None:
    """``start()`` now, or (embedded) once the child serves: the workers then do not
    knock, and log about it, on a port that nobody listens on yet. An external
    ClickHouse that is down is another matter: that is an outage, and it shows."""
    if keeper is None or keeper.wait_up(0):
        start()
        return

    def when_up() -> None:
        while not keeper.wait_up(0.5):
            if keeper.stopping:
                return  # what waits stays in the spool for the next start
        start()

    threading.Thread(target=when_up, name="chworkers-await-clickhouse", daemon=True).start()
