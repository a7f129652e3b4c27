"""The endpoint as a process: lifecycle, data directory lock, signals, load."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import clickhouse_connect
import numpy as np
import pandas as pd
import pytest
from clickhouse_connect.driver.client import Client

from chworkers import EmbeddedClickHouse, EmbeddedError


def client_for(ch: EmbeddedClickHouse, **kwargs: object) -> Client:
    return clickhouse_connect.get_client(host=ch.host, port=ch.port, **kwargs)


@pytest.mark.timeout(120)
def test_data_persists_across_stop_kill_and_restart(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        port = ch.port
        client = client_for(ch)
        client.command("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")
        client.insert("t", [[i] for i in range(100)], column_names=["n"])
        assert ch.stop() == 0  # SIGTERM: clean exit
        ch.start()
        assert ch.port == port
        client = client_for(ch)
        assert client.command("SELECT count() FROM t") == 100
        client.insert("t", [[i] for i in range(100, 150)], column_names=["n"])
        ch.kill()  # a crash: committed inserts survive
        ch.restart()
        assert ch.port == port
        assert client_for(ch).command("SELECT count() FROM t") == 150


@pytest.mark.timeout(60)
def test_second_endpoint_on_same_path_is_refused(endpoint: EmbeddedClickHouse) -> None:
    other = EmbeddedClickHouse(endpoint.path)
    with pytest.raises(EmbeddedError) as info:
        other.start()
    assert "in use by another process" in str(info.value)
    assert str(endpoint.path.resolve()) in str(info.value)
    other.close()
    assert client_for(endpoint).command("SELECT 1") == 1


@pytest.mark.timeout(60)
def test_port_in_use_is_refused(endpoint: EmbeddedClickHouse, tmp_path: Path) -> None:
    other = EmbeddedClickHouse(tmp_path / "data", port=endpoint.port)
    with pytest.raises(EmbeddedError) as info:
        other.start()
    assert "address already in use" in str(info.value)
    other.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chworkers", "embedded", "--path", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("chworkers embedded: serving http://127.0.0.1:")
    url = line.split()[3]
    client = clickhouse_connect.get_client(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
    assert client.command("SELECT 1") == 1  # an idle keep-alive connection stays open
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
def test_stop_waits_for_a_running_query(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        client = client_for(ch)
        result: list[object] = []
        worker = threading.Thread(
            target=lambda: result.append(client.command("SELECT sleep(1), 7"))
        )
        worker.start()
        time.sleep(0.3)
        assert ch.stop() == 0
        worker.join()
        assert result == [["0", "7"]]


@pytest.mark.timeout(120)
def test_million_row_insert(ch_client: Client) -> None:
    ch_client.command(
        "CREATE TABLE big (id UInt64, value Float64, ts DateTime) ENGINE = MergeTree ORDER BY id"
    )
    n = 1_000_000
    ids = np.arange(n, dtype=np.uint64)
    values = ids.astype(np.float64) * 0.5
    ts = pd.to_datetime(1_700_000_000 + ids % 86_400, unit="s")
    summary = ch_client.insert_df("big", pd.DataFrame({"id": ids, "value": values, "ts": ts}))
    assert summary.written_rows == n
    assert ch_client.query("SELECT count(), sum(id), sum(value) FROM big").result_rows == [
        (n, n * (n - 1) // 2, float(values.sum()))
    ]


WORKER = textwrap.dedent(
    """
    import sys, clickhouse_connect
    host, port, database, worker = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    client = clickhouse_connect.get_client(host=host, port=port, database=database)
    for batch in range(20):
        base = (worker * 20 + batch) * 1000
        client.insert("t", [[base + i, worker] for i in range(1000)], column_names=["n", "w"])
    """
)


@pytest.mark.timeout(120)
def test_four_processes_insert_at_once(
    endpoint: EmbeddedClickHouse, ch_client: Client, database: str
) -> None:
    ch_client.command("CREATE TABLE t (n UInt64, w UInt8) ENGINE = MergeTree ORDER BY n")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, endpoint.host, str(endpoint.port), database, str(w)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err
    rows = ch_client.query("SELECT w, count(), uniqExact(n) FROM t GROUP BY w ORDER BY w")
    assert rows.result_rows == [(w, 20_000, 20_000) for w in range(4)]
    assert ch_client.command("SELECT count() FROM t") == 80_000


@pytest.mark.timeout(120)
def test_many_threads_share_the_endpoint(client_factory: object, ch_client: Client) -> None:
    ch_client.command("CREATE TABLE c (n UInt64) ENGINE = MergeTree ORDER BY n")
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            client = client_factory()  # type: ignore[operator]
            for j in range(10):
                client.insert("c", [[k * 1000 + j * 10 + i] for i in range(10)], column_names=["n"])
                assert client.command("SELECT 1") == 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert ch_client.command("SELECT count(), uniqExact(n) FROM c") == ["1600", "1600"]


def test_idle_endpoint_memory_is_reported(endpoint: EmbeddedClickHouse) -> None:
    assert endpoint.pid is not None
    status = Path(f"/proc/{endpoint.pid}/status").read_text()
    rss_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1])
    assert 0 < rss_kb < 2_000_000
    assert os.getpid() != endpoint.pid


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) / 1024


@pytest.mark.timeout(120)
def test_big_results_stream_in_bounded_memory(tmp_path: Path) -> None:
    rows = 20_000_000  # 160 MB of UInt64 in Native
    with EmbeddedClickHouse(tmp_path / "data") as ch:
        assert ch.pid is not None
        client = client_for(ch)
        client.command("SELECT 1")
        before = _peak_rss_mb(ch.pid)
        received = 0
        stream = client.raw_stream(f"SELECT number FROM numbers({rows})", fmt="Native")
        for chunk in stream:
            received += len(chunk)
        assert received > rows * 8
        # wait_end_of_query=1 spools the result (to disk past buffer_size) before sending.
        conn = http.client.HTTPConnection(ch.host, ch.port, timeout=60)
        conn.request("POST", "/?wait_end_of_query=1", f"SELECT number FROM numbers({rows})")
        resp = conn.getresponse()
        assert resp.status == 200
        spooled = 0
        while piece := resp.read(1 << 20):
            spooled += len(piece)
        conn.close()
        assert spooled > rows * 7
        growth = _peak_rss_mb(ch.pid) - before
        assert growth < 120, f"the endpoint's peak RSS grew by {growth:.0f} MB"


@pytest.mark.timeout(60)
def test_cli_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    cmd = [sys.executable, "-m", "chworkers", "embedded", "--path", str(tmp_path / "d")]
    cmd += ["--port", "0", "--user", "carol", "--password-file", str(secret)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[3].rsplit(":", 1)[1])
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, username="carol", password="from-file"
        )
        assert client.command("SELECT 5") == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 3
    assert "cannot read the password file" in missing.stderr


def test_expect_100_continue(endpoint: EmbeddedClickHouse) -> None:
    import socket

    with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
        body = b"SELECT 40 + 2"
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        response = b""
        while not response.endswith(b"0\r\n\r\n"):  # the end of a chunked body
            chunk = sock.recv(4096)
            assert chunk
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert b"\r\n42\n\r\n" in response


@pytest.mark.timeout(60)
def test_stats_count_requests_in_flight(endpoint: EmbeddedClickHouse, ch_client: Client) -> None:
    ch_client.command("CREATE TABLE s (n UInt32) ENGINE = Memory")
    before = endpoint.stats(reset=True)
    for i in range(30):  # back to back: never more than one in flight
        ch_client.command(f"SELECT {i}")
    ch_client.insert("s", [[i] for i in range(123)], column_names=["n"])
    after = endpoint.stats(reset=True)
    assert after["max_requests_in_flight"] == 1
    assert after["requests_total"] - before["requests_total"] >= 31
    assert after["inserted_rows_total"] - before["inserted_rows_total"] == 123
    assert after["requests_in_flight"] == 0
    clients = [client_for(endpoint) for _ in range(3)]
    threads = [threading.Thread(target=c.command, args=("SELECT sleep(0.5)",)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert endpoint.stats()["max_requests_in_flight"] == 3
    for c in clients:
        c.close()


PARENT = textwrap.dedent(
    """
    import sys, time
    from chworkers import EmbeddedClickHouse
    ch = EmbeddedClickHouse(sys.argv[1]).start()
    print(ch.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.timeout(60)
def test_endpoint_exits_when_its_parent_dies(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        status = (
            Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
        )
        if "State:\tZ" in status:  # exited, waiting to be reaped by init
            break
        time.sleep(0.1)
    status = Path(f"/proc/{child}/status").read_text() if Path(f"/proc/{child}").exists() else ""
    assert not status or "State:\tZ" in status, "the orphaned endpoint kept running"


@pytest.mark.timeout(60)
def test_cli_password_flag_still_works_but_warns(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "chworkers", "embedded", "--path", str(tmp_path / "d")]
    cmd += ["--port", "0", "--user", "dave", "--password", "in-argv"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[3].rsplit(":", 1)[1])
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, username="dave", password="in-argv"
        )
        assert client.command("SELECT 6") == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "--password is deprecated" in err and "CHWORKERS_EMBEDDED_PASSWORD" in err
