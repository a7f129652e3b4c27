"""Health tells the truth when a part of the daemon dies (issue 9, defect 15).

A dead source thread or a dead lease broker used to leave ``/healthz`` at 200 and the
systemd watchdog pinging: the daemon looked fine while a source took nothing in, or
while no worker could get a connection again. Both are "failing" now: ``/healthz`` and
``/readyz`` answer 503 with the reason, and the watchdog check fails, so systemd
restarts the daemon.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import waiting

from chworkers import Supervisor
from chworkers.daemon import config
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.service import Daemon
from chworkers.embedded import EmbeddedClickHouse


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.timeout(180)
def test_a_source_thread_that_dies_makes_the_daemon_failing(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """Standard input is a TCP connection the peer resets: reading it raises
    ConnectionResetError, which kills the source's thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    listener.close()
    cfg = config.load(
        data={
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {"url": f"{endpoint.url}/{database}"},
            "supervisor": {"workers": 1},
            "metrics": {"port": 0},
            "http": {"port": 0},
            "spool": {"fsync": False},
            "pipelines": [
                {"name": "in", "source": "stdin", "table": "ev", "create": "n UInt64"},
                {"name": "push", "source": "http", "table": "ev2", "create": "n UInt64"},
            ],
        },
        env={},
    )
    stdin = conn.makefile("rb")
    daemon = Daemon(cfg, stdin=stdin)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert daemon.wait_ready(120)
        base = str(daemon.metrics_url).removesuffix("/metrics")
        waiting.wait_for(lambda: get(base + "/healthz")[1]["status"] == "ok", timeout=60)
        assert daemon._healthy()
        peer.sendall(b'{"n": 1}\n')
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST: the daemon's read of its stdin fails
        waiting.wait_for(lambda: get(base + "/healthz")[0] == 503, timeout=30)
        _, body = get(base + "/healthz")
        assert body["status"] == "failing"
        (problem,) = [p for p in body["problems"] if p["level"] == "failing"]
        assert problem["component"] == "daemon"
        assert problem["reason"].startswith("source in stopped: ConnectionResetError")
        assert get(base + "/readyz")[0] == 503
        assert not daemon._healthy()  # the systemd watchdog pings stop
    finally:
        daemon.request_stop()
        thread.join(120)
        stdin.close()
        conn.close()
    assert not thread.is_alive()


@pytest.mark.timeout(120)
def test_a_closed_lease_broker_makes_the_supervisor_failing(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    """Without its lease broker no worker can take a connection again."""
    with Supervisor(f"{endpoint.url}/{database}", workers=1, metrics_port=0) as sup:
        base = str(sup.metrics_url).removesuffix("/metrics")
        status, body = get(base + "/healthz")
        assert status == 200 and body["status"] == "ok", body
        sup.broker.close()
        status, body = get(base + "/healthz")
        assert status == 503 and body["status"] == "failing", body
        assert body["problems"] == [
            {
                "component": "supervisor",
                "level": "failing",
                "reason": "the lease broker is closed; no worker can get a connection",
            }
        ]
        assert not sup.health().alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stuck_or_dead_dispatcher_thread_is_reported(tmp_path: Path) -> None:
    """The dispatcher hands each batch to the workers in moments; one hand-over that
    does not return (here: the workers' queue never takes it) stalls every batch behind
    it. A hand-over that raises something unexpected costs the batch an attempt (see
    test_fault_dispatcher_survives.py); what still ends the thread (here: an on_failure
    callback that raises) is reported."""
    from chworkers.daemon.dispatch import Dispatcher
    from chworkers.daemon.spool import Spool

    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    release = threading.Event()

    def stuck_submit(batch: Any) -> Any:
        release.wait(30)
        raise TypeError("cannot pickle the batch")  # not a ChworkersError

    def on_failure(batch: Any, error: BaseException) -> None:
        raise RuntimeError("a failing callback")  # this one ends the thread

    dispatcher = Dispatcher(spool, stuck_submit, on_failure=on_failure)
    try:
        assert dispatcher.thread_problems(0.2) == []  # not started: nothing to say
        dispatcher.start()
        dispatcher.add(spool.put("ev", b'{"n":1}\n', format="JSONEachRow", rows=1))
        waiting.wait_for(lambda: bool(dispatcher.thread_problems(0.2)), timeout=10)
        (stuck,) = dispatcher.thread_problems(0.2)
        assert stuck.startswith("the dispatcher has been stuck handing one batch to the workers")
        release.set()
        waiting.wait_for(lambda: not dispatcher._thread.is_alive(), timeout=10)
        assert dispatcher.thread_problems(0.2) == [
            "the dispatcher thread died: spooled batches are no longer sent"
        ]
    finally:
        release.set()
        dispatcher.stop()
        spool.close()
