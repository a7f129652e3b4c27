"""HTTP push under spool pressure: 202 means all of a request, anything else none of it,
ever (issue 9, items 2, 3 and 18)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest
from daemonthread import Running, daemon_config
from faultproxy import FaultProxy
from smalldisk import disk_full, small_filesystem
from waiting import wait_for

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch
from chworkers.embedded import EmbeddedClickHouse


def post(
    port: int, body: bytes, headers: Mapping[str, str] | None = None, path: str = "/ingest/ev"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


def rows(start: int, stop: int) -> bytes:
    return b"".join(b'{"n":%d}\n' % i for i in range(start, stop))


class Push:
    """The push endpoint over a real batcher and spool; batches are collected."""

    def __init__(
        self, spool: Spool, *, spool_timeout: float, max_rows: int = 1000, max_delay: float = 0.05
    ) -> None:
        self.spool = spool
        self.batches: list[SpooledBatch] = []
        limits = BatchLimits(max_rows=max_rows, max_delay=max_delay)
        self.batcher = Batcher(spool, self.batches.append, limits=limits)
        routes = {"ev": Route("ev", "push"), "csv": Route("csv", "push-csv", "CSV")}
        self.server = IngestServer(
            routes, self.batcher, HttpSettings(port=0, spool_timeout=spool_timeout)
        )
        self.server.start()
        port = urlsplit(self.server.url).port
        assert port is not None
        self.port = port

    def spooled(self) -> bytes:
        self.batcher.flush()
        return b"".join(b.payload for b in self.batches)

    def close(self) -> None:
        self.server.stop()
        self.batcher.close(timeout=5)


@pytest.fixture
def blocked_spool(tmp_path: Path) -> Iterator[tuple[Spool, SpooledBatch]]:
    """A spool (policy block) that one batch fills; remove it to make room."""
    spool = Spool(
        tmp_path / "spool", SpoolSettings(max_bytes=64 * 1024, policy="block", fsync=False)
    )
    # An empty spool takes any batch, even one over the cap: this one fills it.
    filler = spool.put("ev", b'{"n":-1}\n' * 8000, format="JSONEachRow", rows=8000)
    yield spool, filler


@pytest.mark.parametrize("size", [100, 5000], ids=["within-a-batch", "larger-than-a-batch"])
def test_a_request_answered_503_is_never_spooled_later(
    blocked_spool: tuple[Spool, SpooledBatch], size: int
) -> None:
    spool, filler = blocked_spool
    push = Push(spool, spool_timeout=0.5, max_rows=1000)
    try:
        status, payload, headers = post(push.port, rows(0, size))
        assert status == 503, payload
        spool.remove(filler)  # room again: what was answered 503 must not land now
        assert post(push.port, rows(size, size + 10))[0] == 202
        assert push.spooled() == rows(size, size + 10)
        assert headers["Retry-After"] and "nothing of them was kept" in payload["error"]
    finally:
        push.close()


def test_the_batching_delay_does_not_count_against_spool_timeout(tmp_path: Path) -> None:
    """A batch is cut up to max_delay after a request: with a spool_timeout shorter than
    that, every request was answered 503 although the spool was empty."""
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    push = Push(spool, spool_timeout=0.2, max_delay=1.0)
    try:
        for i in range(3):
            status, payload, _ = post(push.port, rows(i * 10, i * 10 + 10))
            assert status == 202, payload
        assert push.spooled() == rows(0, 30)
    finally:
        push.close()


def test_concurrent_requests_each_whole_or_not_at_all(
    blocked_spool: tuple[Spool, SpooledBatch],
) -> None:
    """Requests that share a batch: the ones answered 503 are withdrawn from it, the
    ones answered 202 are in the spool, each whole."""
    spool, filler = blocked_spool
    push = Push(spool, spool_timeout=1.0, max_rows=100_000)
    answers: dict[int, int] = {}

    def client(c: int) -> None:
        time.sleep(c * 0.1)  # some time out before the room appears, some after
        answers[c] = post(push.port, rows(c * 100, c * 100 + 100))[0]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(20)]
    for t in threads:
        t.start()
    time.sleep(1.2)
    spool.remove(filler)
    for t in threads:
        t.join()
    try:
        spooled = push.spooled().splitlines(keepends=True)
        accepted = [c for c, status in sorted(answers.items()) if status == 202]
        assert set(answers.values()) <= {202, 503}
        assert 0 < len(accepted) < 20, answers
        assert sorted(spooled) == sorted(
            line for c in accepted for line in rows(c * 100, c * 100 + 100).splitlines(True)
        )
    finally:
        push.close()


def test_a_full_disk_is_a_503_with_retry_after_not_a_500(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as tmpfs:
        spool = Spool(tmp_path / "small" / "spool", SpoolSettings(fsync=True))
        spool.put("ev", b"{}\n", format="JSONEachRow", rows=1)  # numbers reserved
        push = Push(spool, spool_timeout=5)
        try:
            with disk_full(tmp_path / "small", tmpfs=tmpfs):
                status, payload, headers = post(push.port, rows(0, 100))
                assert status == 503, payload
                assert headers["Retry-After"]
                assert "cannot write" in payload["error"]
                assert not [p for p in spool.directory.iterdir() if p.name.startswith(".tmp-")]
            assert post(push.port, rows(100, 200))[0] == 202
            assert push.spooled() == rows(100, 200)
        finally:
            push.close()


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/ingest/ev", "text/csv", 400),  # a JSON pipeline, the body declared CSV
        ("/ingest/csv", "text/csv", 400),  # a CSV pipeline sent JSON: CSV cannot be that
        ("/ingest/ev", "text/tab-separated-values", 400),
        ("/ingest/ev?format=CSVWithNames", "", 400),  # two records: the header is one
        ("/ingest/ev", "application/x-ndjson", 202),
    ],
)
def test_a_json_body_declared_csv_is_refused_with_the_reason(
    tmp_path: Path, path: str, content_type: str, status: int
) -> None:
    push = Push(Spool(tmp_path / "spool", SpoolSettings(fsync=False)), spool_timeout=5)
    try:
        got, payload, _ = post(push.port, rows(0, 2), {"Content-Type": content_type}, path)
        assert got == status, payload
        if status == 400:
            assert "is a JSON object, but the body was declared" in payload["error"]
            assert push.spooled() == b""
        # Real CSV declared CSV is still fine, quotes and all.
        ok = post(push.port, b'1,"{""a"":1}"\n2,x\n', {"Content-Type": "text/csv"}, "/ingest/csv")
        assert ok[0] == 202
    finally:
        push.close()


@pytest.mark.timeout(300)
def test_clients_that_retry_every_non_202_under_spool_pressure_land_each_row_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, fault_proxy: FaultProxy
) -> None:
    """ClickHouse is down, the spool fills, requests wait `spool_timeout` and get 503;
    clients retry everything that is not a 202. Once ClickHouse is back: rows sent ==
    rows in ClickHouse == distinct ids."""
    clients, requests, per_request = 6, 25, 200
    running = Running(
        daemon_config(
            tmp_path / "state",
            f"{fault_proxy.url}/{database}",
            {"source": "http", "max_rows": 1000},
            max_bytes=96 * 1024,
            policy="block",
        )
        | {"http": {"port": 0, "spool_timeout": 0.3}}
    )
    port = urlsplit(running.daemon.ingest_url).port
    assert port is not None
    answers: dict[int, int] = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            first = (c * requests + r) * per_request
            body = b"".join(
                b'{"n":%d,"s":"c%d r%d"}\n' % (i, c, r) for i in range(first, first + per_request)
            )
            while True:
                try:
                    status = post(port, body)[0]
                except (OSError, http.client.HTTPException):
                    status = 0
                with lock:
                    answers[status] = answers.get(status, 0) + 1
                if status == 202:
                    break
                time.sleep(0.05)

    try:
        fault_proxy.set("refuse")  # ClickHouse down: the spool fills and stays full
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        wait_for(lambda: answers.get(503, 0) >= 20, timeout=120)
        fault_proxy.set("pass")
        for t in threads:
            t.join(240)
        sent = clients * requests * per_request
        ch = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
        try:

            def landed() -> tuple[int, int]:
                row = ch.query(f"SELECT count(), uniqExact(n) FROM `{database}`.ev").result_rows
                return int(row[0][0]), int(row[0][1])

            wait_for(lambda: running.daemon.dispatcher.backlog() == 0, timeout=120, interval=0.2)
            time.sleep(1)  # anything landing twice would show now
            assert running.stop() == 0
            assert landed() == (sent, sent), answers
        finally:
            ch.close()
    finally:
        if running.thread.is_alive():
            running.stop()


@pytest.mark.timeout(180)
def test_a_request_sent_again_with_its_idempotency_key_lands_once(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """A client that did not hear its 202 (the daemon killed after spooling, a timeout, a
    reset) cannot know whether the rows were kept, and sends them again. With an
    Idempotency-Key the copy carries the same deduplication token and ClickHouse drops
    it; every id lands once."""
    running = Running(
        daemon_config(
            tmp_path / "state", f"{endpoint.url}/{database}", {"source": "http", "max_rows": 50}
        )
    )
    port = urlsplit(running.daemon.ingest_url or "").port
    assert port is not None
    try:
        bodies = {
            f"req-{r}": b"".join(
                b'{"n":%d,"s":"r%d"}\n' % (i, r) for i in range(r * 200, r * 200 + 200)
            )
            for r in range(5)
        }
        for _ in range(3):  # every request sent three times: two answers "lost"
            for key, body in bodies.items():
                status, payload, _ = post(port, body, {"Idempotency-Key": key})
                assert status == 202, payload
        ch = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
        try:

            def landed() -> tuple[int, int]:
                row = ch.query(f"SELECT count(), uniqExact(n) FROM `{database}`.ev").result_rows
                return int(row[0][0]), int(row[0][1])

            wait_for(lambda: running.daemon.dispatcher.backlog() == 0, timeout=120, interval=0.2)
            time.sleep(0.5)
            assert landed() == (1000, 1000)
        finally:
            ch.close()
        bad = post(port, bodies["req-0"], {"Idempotency-Key": "x" * 300})
        assert bad[0] == 400 and "Idempotency-Key" in bad[1]["error"]
        assert running.stop() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
