"""``chworkers bench`` keeps what it measured when one comparison fails, and its raw-POST
baseline outlives a kept-alive connection the server closed.

A full run takes many minutes; one family failing (a path that raises, workers that
cannot boot because the code changed under a long run) used to end the command with
that error alone, and every result measured before it was lost. Now the failure is
said, the other families still run, the table and the JSON hold all they measured, and
the exit code is 1.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from waiting import wait_for

from chworkers.bench import cli as bench_cli
from chworkers.bench import target
from chworkers.bench.runner import Group
from chworkers.bench.target import RawHttp
from chworkers.cli.main import main
from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BenchError
from chworkers.http.limits import HttpLimits


def test_a_failing_family_loses_none_of_the_others(
    endpoint: EmbeddedClickHouse,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    tmp_path: Path,
) -> None:
    broken = types.ModuleType("chworkers.bench.broken")

    def groups(env: Any, stack: Any) -> list[Group]:
        raise BenchError("the broken family cannot start")

    broken.groups = groups  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chworkers.bench.broken", broken)
    # Listed first: it fails before the real one runs.
    monkeypatch.setattr(bench_cli, "FAMILIES", {"broken": "fails", **bench_cli.FAMILIES})
    db = f"bench_{uuid.uuid4().hex[:12]}"
    out = tmp_path / "bench.json"
    args = ["bench", "--url", endpoint.url, "--database", db, "--json", str(out)]
    args += ["--rounds", "1", "--lease-trips", "20", "--only", "broken", "--only", "lease"]
    assert main(args) == 1

    printed = capsys.readouterr().out
    assert "LeaseBroker acquire+release" in printed
    assert "broken: FAILED: BenchError: the broken family cannot start" in printed
    doc = json.loads(out.read_text())
    assert {r["group"].split(":")[0] for r in doc["results"]} == {"lease"}
    assert doc["options"]["failed"] == {"broken": "BenchError: the broken family cannot start"}
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        assert admin.command(f"EXISTS DATABASE {db}") == 0
    finally:
        admin.close()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # open, nothing to read
        return False


def test_raw_posts_survive_a_kept_alive_connection_the_server_closed(tmp_path: Path) -> None:
    """The raw-POST baseline keeps one connection alive between rounds; the server closed
    it meanwhile (the embedded endpoint after ``idle_timeout``, while other paths ran) and
    the next POST ended the whole comparison with BrokenPipeError. A connection idle for
    longer than a server may keep it is replaced before use."""
    limits = HttpLimits(idle_timeout=0.2)
    with EmbeddedClickHouse(tmp_path / "data", limits=limits) as ch:
        admin = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        admin.command("CREATE TABLE t (x UInt8) ENGINE = Memory")
        raw = RawHttp(ConnectionConfig.from_url(ch.url))
        try:
            raw.post("INSERT INTO t FORMAT TSV", b"1\n")
            sock = raw._conn.sock
            assert sock is not None
            wait_for(lambda: closed_by_peer(sock), timeout=30, what="the server's close")
            time.sleep(getattr(target, "_STALE", 2.0))  # idle longer than servers keep it
            raw.post("INSERT INTO t FORMAT TSV", b"2\n")
        finally:
            raw.close()
        assert admin.query("SELECT x FROM t ORDER BY x").result_rows == [(1,), (2,)]
        admin.close()
