"""A push that its renames make larger than the spool can ever hold is a 413 too.

The check that answers 413 for records no spool could ever hold (more than its
``max_bytes`` or its whole disk) measured them before the pipeline's ``rename`` rewrote
them, not as they are spooled: records over the limit only once renamed went on to the
spool, which takes a batch over ``max_bytes`` only while it is empty (else a 503 with
``Retry-After``, sent again and again by a well-behaved client while other batches
keep it from being empty), and one over the whole disk never.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.mapping import FieldMapper
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool

MiB = 1 << 20


def test_records_grown_past_the_spool_by_their_renames_are_a_413(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=1 * MiB, fsync=False))
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append, limits=BatchLimits(max_delay=0.05))
    long_name = "a_column_name_much_longer_than_the_field_" * 5  # 205 characters
    server = IngestServer(
        {"ev": Route("ev", "push", transform=FieldMapper({"n": long_name}))},
        batcher,
        HttpSettings(port=0, spool_timeout=1, max_body_bytes=64 * MiB),
    )
    server.start()
    # 0.4 MB as sent, 1.4 MB once "n" is renamed: more than the spool's 1 MiB.
    body = b"".join(b'{"n":%d,"s":"%s"}\n' % (i, b"x" * 50) for i in range(5000))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=60)
        conn.request("POST", "/ingest/ev", body=body)
        resp = conn.getresponse()
        status, payload = resp.status, json.loads(resp.read())
        conn.close()
    finally:
        server.stop()
        batcher.close(timeout=5)
    assert status == 413, payload
    assert "more than it can ever hold" in payload["error"], payload
    assert spool.stats()["batches"] == 0
