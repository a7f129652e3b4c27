"""Regression test: a push into a table slowed down for too many parts is not answered 503.

While a table's merges fall behind, the daemon cuts its batches up to ``max_factor``
times later (``max_delay`` grown). The push endpoint still gave a request
``spool_timeout`` plus the pipeline's own ``max_delay`` to be spooled, so a request into
a slowed table was withdrawn and answered 503 before its (longer) batch was even cut.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, PartsSettings, SpoolSettings
from chworkers.daemon.partspressure import PartsPressure
from chworkers.daemon.spool import Spool
from chworkers.errors import ServerError

TOO_MANY_PARTS = ServerError(
    "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)",
    code=252,
    name="TOO_MANY_PARTS",
)


def test_a_push_waits_for_its_slowed_batch(tmp_path: Path) -> None:
    pressure = PartsPressure(PartsSettings(max_factor=8))
    pressure.watch("events")
    for _ in range(3):
        pressure.failed("events", TOO_MANY_PARTS)
    assert pressure.factor("events") == 8
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    batcher = Batcher(spool, lambda b: None, adjust=pressure.limits)
    limits = BatchLimits(max_delay=0.1)  # cut 0.8 s after the request, slowed
    server = IngestServer(
        {"events": Route("events", "push", limits=limits)},
        batcher,
        HttpSettings(port=0, spool_timeout=0.3),
    )
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=10)
        conn.request("POST", "/ingest/events", body=b'{"a":1}\n')
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
    finally:
        server.stop()
        batcher.close()
        spool.close()
    assert resp.status == 202, body
    assert body["rows"] == 1
