"""Runs one of chworkers' HTTP servers in a process of its own, for tests/faults/test_fault_http.py.

    python http_servers.py ingest|metrics DIR LIMITS_JSON

Prints the server's URL on stdout once it listens, then serves until killed. The
push endpoint spools into DIR (nothing reads the spool back: the tests look at the
HTTP side only). It takes bodies of up to 1 MiB, 2 MiB of them at once.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool
from chworkers.http.limits import HttpLimits
from chworkers.ops.exposition import MetricsEndpoint


def main() -> None:
    kind, directory, limits_json = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    limits = HttpLimits(**json.loads(limits_json))
    if kind == "ingest":
        spool = Spool(directory / "spool", SpoolSettings(fsync=False, policy="reject"))
        batcher = Batcher(spool, lambda batch: None, limits=BatchLimits(max_delay=0.01))
        server = IngestServer(
            {"events": Route("events", "push")},
            batcher,
            HttpSettings(port=0, max_body_bytes=1 << 20, max_buffered_bytes=2 << 20, limits=limits),
        )
        server.start()
        url = server.url
    else:
        registry = CollectorRegistry()
        Counter("chworkers_test", "A counter for the fault tests", registry=registry).inc()
        url = MetricsEndpoint(registry, limits=limits).url
    print(url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
