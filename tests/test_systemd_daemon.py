"""``chworkers run`` under a stand-in for systemd: the notify protocol end to end.

The test plays systemd's part: it binds the NOTIFY_SOCKET datagram socket with
SO_PASSCRED, as systemd does, so that every message arrives with the sender's pid, and
starts the real daemon (``chworkers run -c FILE``, the embedded ClickHouse, a generator
pipeline) with NOTIFY_SOCKET and WATCHDOG_USEC set. It then checks what systemd relies
on: READY=1 once data flows, STATUS= updates, WATCHDOG=1 at half the timeout, only
from the main process (``NotifyAccess=main`` drops anything else), RELOADING=1 with
MONOTONIC_USEC and READY=1 around SIGHUP, STOPPING=1 and a clean exit on SIGTERM. A
real Prometheus scrapes the running daemon, and every metric name the dashboard and
the rules use must be in the daemon's own /metrics.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sdnotify import Message, NotifySocket
from test_grafana import BUILTIN_SERIES, dashboard_exprs, metric_names, recorded, rules
from test_prometheus import PrometheusServer, exported_names, find_prometheus, target

from chworkers.daemon.generator import GENERATOR_SCHEMA

pytestmark = pytest.mark.timeout(300)

WATCHDOG_USEC = 2_000_000  # WatchdogSec=2s: pings every second


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    systemd: NotifySocket
    stderr: Path
    started: float

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_for(self, what: str, match: Callable[[Message], bool], timeout: float) -> Message:
        """A message from the running daemon; fails at once, with its log, if it exited."""
        try:
            return self.systemd.wait_for(
                what, match, timeout, alive=lambda: self.process.poll() is None
            )
        except pytest.fail.Exception as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()[-3000:]}") from None

    def ready(self) -> Message:
        return self.wait_for("READY=1", lambda m: m.fields.get("READY") == "1", 180)

    def metrics_url(self) -> str:
        match = re.search(r"metrics (http://\S+/metrics)", self.log())
        assert match, self.log()
        return match[1]


CONFIG = """\
state_dir = "{state}"

[clickhouse]
url = "embedded"

[supervisor]
workers = 1
graceful_timeout = "20s"

[metrics]
port = 0

[http]
port = 0

[spool]
fsync = false

[[pipelines]]
name = "events"
source = "generator"
generator_count = 0        # until stopped
generator_rate = 2000
table = "events"
create = "{schema}"
engine = "MergeTree ORDER BY (event, ts)"
max_rows = 1000
max_delay = "200ms"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("daemon")
    config = tmp / "chworkers.toml"
    config.write_text(CONFIG.format(state=tmp / "state", schema=GENERATOR_SCHEMA))
    systemd = NotifySocket(tmp / "notify.sock")
    stderr = tmp / "stderr.log"
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(systemd.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    binary = Path(sys.executable).parent / "chworkers"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(binary), "run", "-c", str(config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    running = RunningDaemon(process, systemd, stderr, time.monotonic())
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        systemd.close()


def test_ready_status_and_watchdog_come_from_the_main_process(daemon: RunningDaemon) -> None:
    ready = daemon.ready()
    assert "rows inserted" in ready.fields.get("STATUS", ""), ready
    # Then status updates and watchdog pings, once a second each.
    time.sleep(3.5)
    after = [m for m in daemon.systemd.snapshot() if m.at > ready.at]
    pings = [m.at for m in after if m.fields.get("WATCHDOG") == "1"]
    assert len(pings) >= 2, after
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(gap < WATCHDOG_USEC / 1e6 for gap in gaps), gaps  # never late for systemd
    statuses = [m.fields["STATUS"] for m in after if "STATUS" in m.fields]
    assert statuses and all("rows/s" in s for s in statuses), statuses
    # NotifyAccess=main: systemd would drop anything a worker process sent.
    senders = {m.pid for m in daemon.systemd.snapshot()}
    assert senders == {daemon.process.pid}, senders


def test_the_daemon_exports_every_metric_the_dashboard_and_rules_use(
    daemon: RunningDaemon,
) -> None:
    daemon.ready()
    with urllib.request.urlopen(daemon.metrics_url(), timeout=10) as response:
        exported = exported_names(response.read().decode())
    used: set[str] = set()
    for _, expr in dashboard_exprs():
        used |= metric_names(expr)
    for rule in rules():
        used |= metric_names(rule["expr"])
    used -= recorded() | BUILTIN_SERIES
    assert used - exported == set(), "used by grafana/ but not exported by chworkers run"


def test_prometheus_scrapes_the_running_daemon(
    daemon: RunningDaemon,
    tmp_path: Path,
) -> None:
    daemon.ready()
    instance = target(daemon.metrics_url())
    server = PrometheusServer(find_prometheus()[1], tmp_path, [instance])
    try:
        where = f'job="chworkers", instance="{instance}", table="events"'

        def inserted() -> float:
            result = server.query(f"chworkers_rows_inserted_total{{{where}}}")
            return float(result[0]["value"][1]) if result else 0.0

        server.wait_until(lambda: inserted() > 0, "the daemon's inserted rows")
        first = inserted()
        server.wait_until(lambda: inserted() > first, "the row count to grow")
        server.wait_until(
            lambda: bool(
                server.query(f"job_instance_table:chworkers_rows_inserted:rate1m{{{where}}} > 0")
            ),
            "the recorded insert rate",
        )
        (spool,) = server.query(f'chworkers_spool_max_bytes{{instance="{instance}"}}')
        assert float(spool["value"][1]) >= 0
    finally:
        server.close()


def test_sighup_reloads_and_sigterm_stops(daemon: RunningDaemon) -> None:
    systemd = daemon.systemd
    ready = daemon.ready()
    before = time.monotonic()
    sent_at_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.process.send_signal(signal.SIGHUP)
    reloading = daemon.wait_for(
        "RELOADING=1", lambda m: m.at > before and m.fields.get("RELOADING") == "1", 30
    )
    assert int(reloading.fields["MONOTONIC_USEC"]) >= sent_at_usec
    daemon.wait_for(
        "READY=1 after the reload",
        lambda m: m.at > reloading.at and m.fields.get("READY") == "1",
        30,
    )
    assert ready.at < reloading.at

    stop_sent = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    systemd.wait_for(
        "STOPPING=1", lambda m: m.at > stop_sent and m.fields.get("STOPPING") == "1", 60
    )
    code = daemon.process.wait(60)
    assert code == 0, daemon.log()
    # Once stopping, no more watchdog pings: systemd no longer expects them.
    stopping_at = next(
        m.at for m in systemd.snapshot() if m.at > stop_sent and m.fields.get("STOPPING") == "1"
    )
    late = [m for m in systemd.snapshot() if m.at > stopping_at + 0.5 and "WATCHDOG" in m.fields]
    assert late == [], late
