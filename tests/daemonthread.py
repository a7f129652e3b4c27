"""A daemon running in a thread of the test process, for tests that look inside it.

(tests/faults/harness.py runs ``chworkers run`` as a subprocess; this one is for tests
that look inside the daemon: its batcher, spool, totals and metrics.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import clickhouse_connect
from tomlfile import merge

from chworkers.daemon import config
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops.metrics import Metrics


class Running:
    """A daemon in a thread of the test process (stopped as SIGTERM would)."""

    def __init__(self, cfg: config.Config | dict[str, Any], **kw: Any) -> None:
        """``cfg`` is a loaded configuration or the data of one; ``kw`` goes to Daemon."""
        if isinstance(cfg, dict):
            cfg = config.load(data=cfg, env={})
        self.daemon = Daemon(cfg, **kw)
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.daemon.wait_ready(120) and self.error is None, self.error

    def _run(self) -> None:
        try:
            self.code = self.daemon.run()
        except BaseException as exc:
            self.error = exc
            self.daemon._ready.set()

    def stop(self, timeout: float = 120) -> int | None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the daemon did not stop"
        if self.error is not None:
            raise self.error
        return self.code


def lines(start: int, stop: int) -> bytes:
    return b"".join(b'{"n":%d,"s":"row %d"}\n' % (i, i) for i in range(start, stop))


def daemon_config(state: Path, url: str, pipeline: dict[str, Any], **spool: Any) -> dict[str, Any]:
    return {
        "state_dir": str(state),
        "clickhouse": {
            "url": url,
            "pool": {"max_connections": 2, "retry": {"initial_backoff": 0.05, "max_backoff": 0.2}},
        },
        "supervisor": {"workers": 2},
        "metrics": {"port": 0},
        "spool": {"fsync": False, "retry_backoff_max": 0.5, **spool},
        "http": {"port": 0},
        "pipelines": [
            {
                "name": "p",
                "table": "ev",
                "create": "n UInt64, s String",
                "engine": "MergeTree ORDER BY n",
                "max_delay": "100ms",
                "max_rows": 20_000,
                **pipeline,
            }
        ],
    }


def push_config(
    state: Path, url: str, *, pipeline: Mapping[str, Any] | None = None, **sections: Any
) -> dict[str, Any]:
    """The data of a configuration file for tests of SIGHUP and of the command line: one
    worker, the metrics and push endpoints on free ports, one push pipeline ``p`` into
    ``ev`` (``n UInt64``); ``sections`` merged in key by key (``spool={"max_bytes":
    "64MiB"}``), ``pipeline`` into ``p``. Write it with ``tomlfile.to_toml``."""
    base: dict[str, Any] = {
        "state_dir": str(state),
        "clickhouse": {"url": url},
        "supervisor": {"workers": 1},
        "metrics": {"port": 0},
        "http": {"port": 0},
    }
    p = {"name": "p", "source": "http", "table": "ev", "create": "n UInt64", **(pipeline or {})}
    return {**merge(base, sections), "pipelines": [p]}


def count(endpoint: EmbeddedClickHouse, database: str) -> tuple[int, int]:
    client = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        row = client.query(f"SELECT count(), uniqExact(n) FROM `{database}`.ev").result_rows[0]
        return int(row[0]), int(row[1])
    finally:
        client.close()


def metric_total(metrics: Metrics, name: str) -> float:
    """The sum of a metric's samples named ``name`` over all their labels."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    )
