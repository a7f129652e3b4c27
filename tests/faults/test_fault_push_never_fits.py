"""A push that can never fit in the spool is answered 413 with the limit, not 503.

Records more than the spool's whole filesystem (or its ``max_bytes``) were answered
``503`` with ``Retry-After``, like records that do not fit *now*: a well-behaved client
sent them again forever, and each try held the spool's writers up until its
``spool_timeout``. A push that merely does not fit now keeps its 503.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from smalldisk import small_filesystem

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.batchfile import SpooledBatch
from chworkers.daemon.ingest import IngestServer, Route
from chworkers.daemon.options import HttpSettings, SpoolSettings
from chworkers.daemon.spool import Spool

MiB = 1 << 20


def post(port: int, body: bytes) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/ingest/ev", body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


def rows(count: int, width: int = 100) -> bytes:
    pad = "x" * width
    return b"".join(b'{"n":%d,"s":"%s"}\n' % (i, pad.encode()) for i in range(count))


class Push:
    def __init__(self, spool: Spool) -> None:
        self.batches: list[SpooledBatch] = []
        self.batcher = Batcher(spool, self.batches.append, limits=BatchLimits(max_delay=0.05))
        self.refused: list[str] = []
        self.server = IngestServer(
            {"ev": Route("ev", "push")},
            self.batcher,
            HttpSettings(port=0, spool_timeout=1, max_body_bytes=64 * MiB),
            on_refusal=self.refused.append,
        )
        self.server.start()
        self.port = urlsplit(self.server.url).port or 0

    def close(self) -> None:
        self.server.stop()
        self.batcher.close(timeout=5)


def test_a_push_larger_than_the_spool_cap_is_a_413_naming_the_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(max_bytes=1 * MiB, fsync=False))
    push = Push(spool)
    try:
        status, payload, headers = post(push.port, rows(20_000))  # ~2.3 MB
        assert status == 413, payload
        assert "Retry-After" not in headers
        assert "max_bytes) is 1,048,576 bytes" in payload["error"], payload
        assert "smaller requests" in payload["error"]
        assert push.refused == ["too_large"]
        assert spool.stats()["batches"] == 0
        assert post(push.port, rows(1000))[0] == 202  # one that fits still does
    finally:
        push.close()


def test_a_push_larger_than_the_whole_disk_is_a_413(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", size_mib=4) as tmpfs:
        if not tmpfs:
            pytest.skip("no tmpfs can be mounted here")
        spool = Spool(tmp_path / "small" / "spool", SpoolSettings(max_bytes=1 << 30))
        push = Push(spool)
        try:
            status, payload, _ = post(push.port, rows(50_000))  # ~5.8 MB > 4 MiB
            assert status == 413, payload
            assert "whole filesystem of the spool" in payload["error"], payload
            assert post(push.port, rows(1000))[0] == 202
        finally:
            push.close()


def test_a_push_that_does_not_fit_now_keeps_its_503(tmp_path: Path) -> None:
    spool = Spool(
        tmp_path / "spool", SpoolSettings(max_bytes=1 * MiB, policy="reject", fsync=False)
    )
    spool.put("ev", b'{"n":-1}\n' * 115_000, format="JSONEachRow", rows=115_000)  # full
    push = Push(spool)
    try:
        status, payload, headers = post(push.port, rows(1000))
        assert status == 503, payload
        assert headers["Retry-After"]
    finally:
        push.close()
