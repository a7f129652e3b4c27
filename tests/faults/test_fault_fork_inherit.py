"""Regression test: with ``start_method = "fork"`` a restart after ``kill -9`` works while
the old workers still run (issue 9, item 14).

Forked workers used to inherit the daemon's state-directory lock and its listening
sockets (push endpoint, metrics). A worker busy with an insert when the daemon is killed
goes on until its request ends, and until then a restart failed: "state directory ... is
in use", or the push port was taken. Here ClickHouse (through the fault proxy) holds
every INSERT for a minute, so the worker is still inside one when the daemon dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import clickhouse_connect
import pytest
from faultproxy import FaultProxy
from waiting import wait_for

from chworkers.embedded import EmbeddedClickHouse
from chworkers.pids import alive

ROWS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/ingest/ev", data=body)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(resp.status)


def started(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """The daemon said it runs (a port that accepts could be an inherited socket), or
    it exited."""
    return b"chworkers running" in log.read_bytes() or proc.poll() is not None


@pytest.mark.timeout(240)
def test_restart_after_kill_9_while_a_forked_worker_is_busy(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, fault_proxy: FaultProxy
) -> None:
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port, database=database)
    admin.command(
        "CREATE TABLE ev (n UInt64) ENGINE MergeTree ORDER BY n "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    ingest_port = free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{fault_proxy.url}/{database}"
[supervisor]
workers = 1
start_method = "fork"
graceful_timeout = 2
max_tasks_per_worker = 1   # the busy worker is a replacement, forked after intake started
max_tasks_jitter = 0
[metrics]
port = 0
[http]
port = {ingest_port}
[spool]
fsync = false
[[pipelines]]
name = "push"
source = "http"
table = "ev"
format = "JSONEachRow"
max_delay = "100ms"
"""
    )
    cmd = [sys.executable, "-m", "chworkers", "run", "-c", str(conf)]
    first_log = tmp_path / "first.log"
    log = first_log.open("wb")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    second: subprocess.Popen[bytes] | None = None
    workers: list[int] = []
    try:
        wait_for(lambda: started(first, first_log), 90, interval=0.1, what="the first daemon")
        assert first.poll() is None, first_log.read_text()[-3000:]
        # A client in the middle of a request (its body never comes) when workers fork.
        client = socket.create_connection(("127.0.0.1", ingest_port), timeout=30)
        client.sendall(b"POST /ingest/ev HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        assert post(ingest_port, b'{"n":%d}\n' % ROWS) == 202  # worker-1's one task
        wait_for(
            lambda: admin.command("SELECT count() FROM ev") == 1,
            60,
            interval=0.1,
            what="the first row",
        )
        fault_proxy.set("delay", delay=60.0, match=b"INSERT")
        assert post(ingest_port, b"".join(b'{"n":%d}\n' % i for i in range(ROWS))) == 202
        wait_for(
            lambda: fault_proxy.counts["delayed"] >= 1,
            60,
            interval=0.1,
            what="a worker inside an insert",
        )
        workers = children(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        busy = [pid for pid in workers if alive(pid)]
        assert busy, "no worker outlived the daemon: the drill tests nothing"
        client.settimeout(10)  # its connection closes with the daemon, not with the worker
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            assert client.recv(1024) == b""
        client.close()

        second_log = tmp_path / "second.log"
        second = subprocess.Popen(cmd, stdout=second_log.open("wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: started(second, second_log), 90, interval=0.1, what="the restarted daemon")
        assert second.poll() is None, second_log.read_text()[-3000:]
        assert any(alive(pid) for pid in busy), "the old worker exited before the restart"
        fault_proxy.set("pass")
        wait_for(
            lambda: admin.command("SELECT count() FROM ev") >= ROWS + 1,
            120,
            what="the replayed batch",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, second_log.read_text()[-3000:]
        counts = admin.query("SELECT count(), uniqExact(n) FROM ev").result_rows[0]
        assert counts == (ROWS + 1, ROWS + 1)
    finally:
        fault_proxy.set("pass")
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
        admin.close()
