"""What each shard of a cluster is doing, for metrics and health.

:class:`ShardStats` counts, per shard, the rows its parts inserted and the attempts
that failed (``chworkers_shard_rows_total``, ``chworkers_shard_errors_total``), shows
its backlog (``chworkers_shard_backlog_batches``, from the dispatcher) and how many of
its replicas answer ``/ping`` (``chworkers_shard_replicas_up``, probed every few
seconds from the daemon's own thread), and tells health when a shard holds batches
back: which shard, how many batches, since when and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence

from chworkers.clickhouse.cluster import Cluster
from chworkers.ops.metrics import Metrics
from chworkers.wording import plural

__all__ = ["ShardStats"]

log = logging.getLogger(__name__)

#: How often each replica is pinged, and how long a ping may take (seconds).
PROBE_EVERY = 5.0
PROBE_TIMEOUT = 2.0


@dataclasses.dataclass
class _Shard:
    replicas: tuple[str, ...]
    up: int = -1  # replicas that answered the last probe (-1: not probed yet)
    failing_since: float | None = None  # wall clock of the first failure in a row
    failures: int = 0
    last_error: str = ""


class ShardStats:
    """Per-shard counters, gauges and health of the daemon's inserts into ``cluster``.

    ``backlog()`` gives each shard's batches not yet confirmed (the dispatcher's
    :meth:`~chworkers.daemon.dispatch.Dispatcher.shard_backlog`).
    """

    def __init__(
        self,
        cluster: Cluster,
        backlog: Callable[[], Sequence[int]],
        *,
        scheme: str = "http",
        metrics: Metrics | None = None,
        probe_every: float = PROBE_EVERY,
    ) -> None:
        self.cluster = cluster
        self._backlog = backlog
        self._metrics = metrics
        self.probe_every = probe_every
        self._lock = threading.Lock()
        self._shards = [
            _Shard(tuple(f"{scheme}://{host}" for host in shard.replicas))
            for shard in cluster.shards
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._probe_loop, name="chworkers-shards", daemon=True
        )
        if metrics is not None:
            for i in range(len(cluster)):  # series exist at 0 before the first event
                metrics.shard_rows.labels(shard=str(i))
                metrics.shard_errors.labels(shard=str(i))
                metrics.shard_backlog.labels(shard=str(i))
                metrics.shard_replicas.labels(shard=str(i)).set(len(cluster.shards[i].replicas))

    def start(self) -> None:
        if len(self.cluster) > 1:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=PROBE_TIMEOUT * 2)

    # -- events ------------------------------------------------------------------------

    def confirmed(self, shard: int, rows: int) -> None:
        """A part for ``shard`` was inserted (``rows`` as ClickHouse counted them)."""
        with self._lock:
            state = self._shards[shard] if 0 <= shard < len(self._shards) else None
            if state is not None and state.failing_since is not None:
                log.info(
                    "shard %d takes inserts again (after %d failed attempts)", shard, state.failures
                )
            if state is not None:
                state.failing_since, state.failures, state.last_error = None, 0, ""
        if self._metrics is not None:
            self._metrics.shard_rows.labels(shard=str(shard)).inc(rows)

    def failed(self, shard: int, error: BaseException) -> None:
        """An attempt to insert a part into ``shard`` failed."""
        with self._lock:
            if 0 <= shard < len(self._shards):
                state = self._shards[shard]
                if state.failing_since is None:
                    state.failing_since = time.time()
                state.failures += 1
                state.last_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        if self._metrics is not None:
            self._metrics.shard_errors.labels(shard=str(shard)).inc()

    # -- observing ---------------------------------------------------------------------

    def publish(self) -> None:
        """Set the backlog and replica gauges to what they are now."""
        if self._metrics is None:
            return
        for i, count in enumerate(self._backlog()):
            self._metrics.shard_backlog.labels(shard=str(i)).set(count)
        with self._lock:
            ups = [s.up for s in self._shards]
        for i, up in enumerate(ups):
            if up >= 0:
                self._metrics.shard_replicas_up.labels(shard=str(i)).set(up)

    def problems(self) -> list[str]:
        """One line per shard that holds batches back, or has no replica answering."""
        backlog = list(self._backlog())
        lines = []
        with self._lock:
            for i, state in enumerate(self._shards):
                waiting = backlog[i] if i < len(backlog) else 0
                if state.failing_since is not None and waiting:
                    since = time.strftime("%H:%M:%S", time.gmtime(state.failing_since))
                    lines.append(
                        f"shard {i} ({', '.join(state.replicas)}): {plural(waiting, 'batch')} held back "
                        f"since {since} UTC ({plural(state.failures, 'failed attempt')}; the other shards "
                        f"go on): {state.last_error}"
                    )
                elif state.up == 0:
                    lines.append(
                        f"shard {i} ({', '.join(state.replicas)}): no replica answers /ping"
                    )
        return lines

    def status(self) -> str:
        """Each shard's backlog for the status line (``STATUS=``, the terminal's live
        line), e.g. ``shard backlog 0/12/0``."""
        return "shard backlog " + "/".join(str(n) for n in self._backlog())

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            for state in self._shards:
                up = sum(_ping(url) for url in state.replicas if not self._stop.is_set())
                with self._lock:
                    state.up = up
            self.publish()
            self._stop.wait(self.probe_every)


def _ping(url: str) -> bool:
    with (
        contextlib.suppress(OSError, ValueError),
        urllib.request.urlopen(f"{url}/ping", timeout=PROBE_TIMEOUT) as response,
    ):
        return bool(response.status == 200)
    return False
