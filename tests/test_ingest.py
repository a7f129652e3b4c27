from __future__ import annotations

import gzip
import http.client
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch


class Harness:
    def __init__(self, root: Path, *, max_bytes: int = 1 << 30, **http_settings: Any) -> None:
        self.spool = Spool(root, SpoolSettings(fsync=False, max_bytes=max_bytes, policy="reject"))
        self.batches: list[SpooledBatch] = []
        self.batcher = Batcher(self.spool, self.batches.append, limits=BatchLimits(max_delay=0.02))
        routes = {"events": Route("events", "push"), "metrics": Route("metrics", "push", "CSV")}
        self.server = IngestServer(routes, self.batcher, HttpSettings(port=0, **http_settings))
        self.server.start()
        self.port = urlsplit(self.server.url).port

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, object], Mapping[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        conn.close()
        return resp.status, payload, dict(resp.getheaders())

    def close(self) -> None:
        self.server.stop()
        self.batcher.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def test_accepted_only_once_spooled(harness: Harness) -> None:
    status, payload, _ = harness.post("/ingest/events", b'{"a":1}\n{"a":2}\n')
    assert status == 202
    assert payload["rows"] == 2
    on_disk = Spool(harness.spool.directory).recover()
    assert [b.seq for b in on_disk] == [payload["batch"]]
    assert on_disk[0].payload == b'{"a":1}\n{"a":2}\n'
    assert on_disk[0].table == "events"


def test_eight_concurrent_clients_exact_count(harness: Harness) -> None:
    def client(n: int) -> None:
        for i in range(25):
            body = b"".join(b'{"c":%d,"i":%d,"j":%d}\n' % (n, i, j) for j in range(40))
            status, payload, _ = harness.post("/ingest/events", body)
            assert status == 202 and payload["rows"] == 40

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    harness.batcher.flush()
    rows = b"".join(b.payload for b in harness.batches).splitlines()
    assert len(rows) == 8 * 25 * 40
    assert len(set(rows)) == len(rows)


def test_gzip_and_csv_by_content_type(harness: Harness) -> None:
    status, payload, _ = harness.post(
        "/ingest/metrics",
        gzip.compress(b'1,"a\nb"\n2,c'),
        {"Content-Encoding": "gzip", "Content-Type": "text/csv"},
    )
    assert (status, payload["rows"]) == (202, 2)
    harness.batcher.flush()
    assert harness.batches[-1].payload == b'1,"a\nb"\n2,c\n'
    assert harness.batches[-1].format == "CSV"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason"),
    [
        ("/ingest/events", b'{"a":1}\n{"a":\n', {}, 400, "line 2: not valid JSON"),
        ("/ingest/events", b"[1,2]\n", {}, 400, "line 1: expected a JSON object"),
        ("/ingest/nope", b"{}\n", {}, 404, "configured: events, metrics"),
        ("/other", b"{}\n", {}, 404, "POST /ingest/<table>"),
        ("/ingest/events?format=Parquet", b"x", {}, 415, "not accepted"),
        ("/ingest/events", b"\x1f\x8bjunk", {"Content-Encoding": "gzip"}, 400, "broken gzip"),
        ("/ingest/events", b"{}\n", {"Content-Encoding": "br"}, 415, "use gzip"),
    ],
)
def test_bad_requests_say_why_and_keep_nothing(
    harness: Harness, path: str, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    got, payload, _ = harness.post(path, body, headers)
    assert got == status
    assert reason in str(payload["error"])
    harness.batcher.flush()
    assert harness.batches == []
    # The server keeps serving.
    assert harness.post("/ingest/events", b"{}\n")[0] == 202


def test_size_limits_before_and_after_decompression(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_body_bytes=1000)
    try:
        assert h.post("/ingest/events", b'{"a":1}\n' * 200)[0] == 413
        bomb = gzip.compress(b'{"a":1}\n' * 10_000)
        status, payload, _ = h.post("/ingest/events", bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "inflates" in str(payload["error"])
    finally:
        h.close()


def test_bearer_token(tmp_path: Path) -> None:
    h = Harness(tmp_path, token="s3cret")
    try:
        status, _, headers = h.post("/ingest/events", b"{}\n")
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        assert h.post("/ingest/events", b"{}\n", {"Authorization": "Bearer nope"})[0] == 401
        assert h.post("/ingest/events", b"{}\n", {"Authorization": "Bearer s3cret"})[0] == 202
    finally:
        h.close()


def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    # (Each record fits the spool alone: one over max_bytes is a 413, test_fault_push_never_fits.)
    h = Harness(tmp_path, max_bytes=3000)
    try:
        assert h.post("/ingest/events", b'{"a":"' + b"x" * 1500 + b'"}\n')[0] == 202
        status, payload, headers = h.post("/ingest/events", b'{"a":"' + b"y" * 1500 + b'"}\n')
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert "spool" in str(payload["error"])
    finally:
        h.close()
