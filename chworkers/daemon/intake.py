"""The daemon's intake: the sources that read records, and the HTTP push endpoint.

An :class:`Intake` builds what each pipeline's ``source`` says: standard input, files
and the generator read in a thread each (:mod:`chworkers.daemon.sources`,
:mod:`~chworkers.daemon.filesource`, :mod:`~chworkers.daemon.generator`); every
``source = "http"`` pipeline is a route of the one push endpoint
(:mod:`chworkers.daemon.ingest`). It starts them together, and stops them in order at a
stop: no new reads, the push endpoint closed to new requests, the threads joined by the
deadline, and later (once the batcher has settled what was accepted) every push request
answered. A source whose thread fails is logged and reported by :meth:`Intake.problems`
(a restart fixes it); each source's rows are counted when it ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from chworkers.daemon.batcher import Batcher
from chworkers.daemon.brokers import BROKER_SOURCES
from chworkers.daemon.brokers.common import BrokerSource
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.closedfiles import fit_open_files
from chworkers.daemon.columnsource import BadFile, ColumnarFileSource
from chworkers.daemon.filesource import MAX_OPEN_FILES, FileSource
from chworkers.daemon.generator import GeneratorSource
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.daemon.sources import StreamSource
from chworkers.errors import BatcherClosedError, ConfigError
from chworkers.ops.metrics import Metrics

__all__ = ["Intake", "Source"]

log = logging.getLogger(__name__)

Source = StreamSource | FileSource | ColumnarFileSource | GeneratorSource | BrokerSource


class Intake:
    """The sources of the daemon's pipelines and its push endpoint, started and stopped
    together."""

    def __init__(
        self,
        pipelines: Sequence[PipelineSettings],
        batcher: Batcher,
        checkpoints: Checkpoints,
        *,
        http: HttpSettings,
        metrics: Metrics,
        stdin: BinaryIO | None = None,
        on_rows: Callable[[int], None] = lambda rows: None,
        make_broker: Callable[[PipelineSettings, dict[str, Any]], BrokerSource] | None = None,
        bad_file: BadFile | None = None,
    ) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.http = http
        self.on_rows = on_rows
        self.ingest: IngestServer | None = None
        self._observer: Callable[[], None] | None = None
        self.sources: list[Source] = []
        #: Broker sources by pipeline name: the daemon asks them about their batches.
        self.brokers: dict[str, BrokerSource] = {}
        self._routes: dict[str, Route] = {}
        self._endless = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()
        open_files = fit_open_files(
            {
                p.name: p.max_open_files if p.follow else min(MAX_OPEN_FILES, p.max_open_files)
                for p in pipelines
                if p.source == "file" and not p.columnar
            }
        )
        for p in pipelines:
            self._endless |= (
                (p.source == "file" and p.follow)
                or (p.source == "generator" and p.generator_count == 0)
                or p.source in BROKER_SOURCES
            )
            if p.source == "http":
                self._routes[p.table] = Route(
                    p.table, p.name, p.format, p.settings, p.limits, p.mapper
                )
                continue
            common: dict[str, Any] = {
                "name": p.name,
                "table": p.table,
                "format": p.format,
                "batcher": batcher,
                "settings": p.settings,
                "on_error": self.source_error,
                "limits": p.limits,
                "transform": p.mapper,
                "max_record_bytes": p.max_record_bytes,
            }
            source: Source
            if p.source == "stdin":
                source = StreamSource(stdin or sys.stdin.buffer, **common)
            elif p.source in BROKER_SOURCES:
                if make_broker is None:
                    raise ConfigError(
                        f"pipeline {p.name!r}: source = {p.source!r} is not available here",
                        key="source",
                        value=p.source,
                        expected="stdin, file, http or generator",
                    )
                source = self.brokers[p.name] = make_broker(p, common)
            elif p.source == "file" and p.columnar:
                source = ColumnarFileSource(
                    p.paths,
                    checkpoints=checkpoints,
                    follow=p.follow,
                    poll_interval=p.poll_interval,
                    forget_after=p.forget_after,
                    settle=p.settle,
                    bad_file=bad_file,
                    **common,
                )
            elif p.source == "file":
                source = FileSource(
                    p.paths,
                    checkpoints=checkpoints,
                    follow=p.follow,
                    poll_interval=p.poll_interval,
                    forget_after=p.forget_after,
                    max_open_files=open_files[p.name],
                    close_idle_after=p.close_idle_after,
                    metrics=self.metrics,
                    # A batch split by sharding key is read whole from the spool.
                    by_reference=p.spool_data == "reference" and p.sharding_key is None,
                    **common,
                )
            else:
                source = GeneratorSource(count=p.generator_count, rate=p.generator_rate, **common)
            self.sources.append(source)
            self._threads.append(
                threading.Thread(
                    target=self._run, args=(source,), name=f"source-{p.name}", daemon=True
                )
            )

    @property
    def finite(self) -> bool:
        """Whether every source ends by itself (no push endpoint, no followed file, no
        endless generator): the daemon then stops once they have."""
        return not self._routes and not self._endless

    def start(self) -> None:
        """Open the push endpoint (when a pipeline pushes) and start the reading threads."""
        if self._routes:
            observer = self.metrics.http_endpoint("push")
            self.ingest = ingest = IngestServer(
                self._routes,
                self.batcher,
                self.http,
                on_error=self.source_error,
                on_refusal=observer.on_refusal,
            )
            observer.connections = lambda: ingest.connections
            self._observer = observer.refresh
            ingest.start()
        for thread in self._threads:
            thread.start()

    def refresh(self) -> None:
        """Bring the push endpoint's gauges up to date."""
        if self._observer is not None:
            self._observer()

    def reading(self) -> bool:
        """Whether a source is still reading."""
        return any(t.is_alive() for t in self._threads)

    def stop(self, deadline: float | None) -> None:
        """Stop reading: sources stop at their next record, the push endpoint takes no new
        request, and the threads get until ``deadline`` (``None``: as long as they take)."""
        self._stop.set()
        if self.ingest is not None:
            self.ingest.stop()
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        """The daemon is done with its batches: broker sources that hold a connection
        (and threads that keep it) close it."""
        for broker in self.brokers.values():
            close = getattr(broker, "close", None)  # not every broker client needs closing
            if close is not None:
                close()

    def wait_answered(self, timeout: float) -> None:
        """Up to ``timeout`` for every push request taken in to hear its answer."""
        if self.ingest is not None:
            self.ingest.wait_answered(timeout)

    def problems(self) -> list[str]:
        """Sources whose thread died: only a restart brings them back."""
        with self._lock:
            failed = dict(self._failures)
        return [f"source {name} stopped: {error}" for name, error in sorted(failed.items())]

    def source_error(self, source: str, message: str) -> None:
        """A source (or a push request) met records it could not take."""
        self.metrics.source_errors.labels(source=source).inc()

    def _run(self, source: Source) -> None:
        try:
            source.run(self._stop)
        except BatcherClosedError:
            log.info("source %s stopped: the daemon is stopping", source.name)
        except Exception as exc:
            log.exception("source %s failed", source.name)
            with self._lock:
                self._failures[source.name] = f"{type(exc).__name__}: {exc}"
        finally:
            self.on_rows(source.rows)
