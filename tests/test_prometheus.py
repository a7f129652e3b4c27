"""grafana/'s Prometheus files, checked by Prometheus' own tools and a real server.

promtool and the prometheus server come from Debian's ``prometheus`` package. The
session-scoped fixture installs it when it is missing (a one-time apt-get), so a fresh
machine needs nothing but the test command.

The end-to-end tests start a real Prometheus on loopback that loads the shipped rules
and scrapes two targets in the example's ``chworkers`` job: a real :class:`Supervisor`
inserting into the embedded ClickHouse endpoint (its own ``/metrics``), and a served
:class:`~chworkers.ops.metrics.Metrics` registry that a thread keeps changing the way a busy
daemon would, for the daemon-level series (spool, dead letters, sources) a bare
supervisor does not have, so that every dashboard query has data to return.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import yaml
from debpackages import install
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from test_grafana import BUILTIN_SERIES, dashboard_exprs, metric_names, recorded, rules

import chworkers.freeport
from chworkers import EmbeddedClickHouse, Supervisor, __version__
from chworkers.errors import ServerError
from chworkers.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "grafana" / "prometheus"
RULES = PROMETHEUS_DIR / "chworkers.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "chworkers.rules.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "grafana" / "chworkers-dashboard.json"


def find_prometheus() -> tuple[str, str]:
    """Paths of promtool and prometheus, installed on first use (skips if impossible)."""
    promtool, server = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or server is None:
        failure = install("prometheus", "promtool", "prometheus")
        promtool, server = shutil.which("promtool"), shutil.which("prometheus")
        if promtool is None or server is None:
            pytest.skip(f"promtool/prometheus are missing and could not be installed: {failure}")
    return promtool, server


@pytest.fixture(scope="session")
def prometheus_tools() -> tuple[str, str]:
    return find_prometheus()


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def promtool(tools: tuple[str, str], *args: str) -> str:
    result = subprocess.run(
        [tools[0], *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


# --- promtool ------------------------------------------------------------------------


@pytest.mark.timeout(1500)  # the first test may install the package
def test_promtool_check_rules(prometheus_tools: tuple[str, str]) -> None:
    output = promtool(prometheus_tools, "check", "rules", RULES.name)
    assert "SUCCESS" in output


def test_promtool_check_example_config(prometheus_tools: tuple[str, str]) -> None:
    output = promtool(prometheus_tools, "check", "config", EXAMPLE_CONFIG.name)
    assert "is valid prometheus config file" in output


def test_promtool_test_rules(prometheus_tools: tuple[str, str]) -> None:
    output = promtool(prometheus_tools, "test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in output


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    groups = rule_groups()
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    firing: set[str] = set()
    quiet: set[str] = set()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts, "no alerts found"
    assert alerts - firing == set(), "alerts never shown to fire"
    assert alerts - quiet == set(), "alerts never shown to stay quiet"
    # Every firing expectation is for a subset of the instances in its case: the other
    # instances of that case are the ones that must stay quiet. (An alert on what many
    # daemons share, such as a broker's consumer group, has no instance: its case names
    # the groups that stay quiet instead.)
    for case in tests:
        instances = {
            m for s in case["input_series"] for m in re.findall(r'instance="([^"]+)"', s["series"])
        }
        for check in case.get("alert_rule_test", []):
            fired = {a["exp_labels"].get("instance") for a in check.get("exp_alerts", [])}
            assert fired - {None} <= instances, case["name"]


# --- a real Prometheus scraping a real exposition ------------------------------------------


def free_port() -> int:
    return chworkers.freeport.free_port("127.0.0.1")


class BusyDaemon:
    """A chworkers Metrics registry served over HTTP, changing like a busy daemon's."""

    def __init__(self) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.server, self._server_thread = start_http_server(
            0, addr="127.0.0.1", registry=self.metrics.registry
        )
        self.port = self.server.server_port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        m = self.metrics
        m.build_info.info({"version": __version__})
        m.pool_max.set(4)
        m.queue_capacity.set(1000)
        m.spool_max_bytes.set(2**31)
        m.worker_memory_limit.set(2**30)
        self.tick()
        self._thread.start()

    def tick(self) -> None:
        m, rnd = self.metrics, random.Random()
        for table in ("events", "clicks"):
            rows = rnd.randint(500, 1500)
            m.rows_inserted.labels(table).inc(rows)
            m.bytes_inserted.labels(table).inc(rows * 80)
            m.insert_duration.labels(table).observe(rnd.uniform(0.005, 0.2))
            m.last_insert.labels(table).set(time.time())
            m.dead_letter_rows.labels(table).inc(rnd.randint(0, 2))
            m.table_limit_wait.labels(table).observe(rnd.uniform(0, 0.5))
            m.table_limit_waiting.labels(table).set(rnd.randint(0, 3))
            m.table_parts.labels(table).set(rnd.randint(1, 600))
            m.table_parts_delay_at.labels(table).set(1000)
            m.parts_factor.labels(table).set(rnd.choice((1, 2, 4)))
            m.too_many_parts.labels(table).inc(rnd.randint(0, 1))
            m.partition_splits.labels(table, "presplit").inc(rnd.randint(0, 2))
            m.parts_slowdowns.labels(table).inc(rnd.randint(0, 1))
        m.tasks.labels("insert", "success").inc(2)
        m.tasks.labels("insert", "failure").inc(rnd.randint(0, 1))
        m.task_duration.labels("insert").observe(rnd.uniform(0.005, 0.3))
        m.errors.labels("server", "241").inc()
        m.errors.labels("transport", "").inc(rnd.randint(0, 1))
        m.retries.labels("server").inc()
        m.pool_in_use.set(rnd.randint(0, 4))
        m.pool_idle.set(rnd.randint(0, 2))
        m.pool_waiting.set(rnd.randint(0, 3))
        m.pool_acquire_wait.observe(rnd.uniform(0.0001, 0.05))
        m.pool_created.inc()
        m.pool_closed.labels("idle").inc()
        m.queue_depth.set(rnd.randint(0, 50))
        m.workers.labels("busy").set(3)
        m.workers.labels("idle").set(1)
        m.worker_restarts.labels("crashed").inc(rnd.randint(0, 1))
        m.worker_restarts.labels("memory").inc(rnd.randint(0, 1))
        m.worker_memory.labels("max").set(rnd.randint(200, 300) * 2**20)
        m.worker_memory.labels("sum").set(rnd.randint(800, 1200) * 2**20)
        m.workers_target.set(4)
        m.worker_scaling.labels("up").inc(rnd.randint(0, 1))
        m.spool_bytes.set(rnd.randint(0, 10**6))
        m.spool_batches.set(rnd.randint(0, 10))
        m.spool_oldest_age.set(rnd.uniform(0, 5))
        m.spool_quarantined.inc(rnd.randint(0, 1))
        m.spool_dropped.inc(rnd.randint(0, 1))
        m.source_rows.labels("http").inc(1000)
        m.source_errors.labels("http").inc(rnd.randint(0, 1))
        m.source_files.labels("logs", "open").set(rnd.randint(0, 256))
        m.source_reopens.labels("logs").inc(rnd.randint(1, 50))
        m.source_files.labels("logs", "closed").set(rnd.randint(0, 2000))
        m.broker_lag.labels("orders").set(rnd.randint(0, 500))
        m.broker_pending.labels("orders").set(rnd.randint(0, 50))
        m.broker_acked.labels("orders").inc(rnd.randint(50, 100))
        m.broker_redeliveries.labels("orders").inc(rnd.randint(0, 1))
        for shard in ("0", "1", "2"):  # a sharded cluster
            m.shard_rows.labels(shard).inc(rnd.randint(100, 500))
            m.shard_errors.labels(shard).inc(rnd.randint(0, 1))
            m.shard_backlog.labels(shard).set(rnd.randint(0, 5))
            m.shard_replicas.labels(shard).set(2)
            m.shard_replicas_up.labels(shard).set(rnd.randint(1, 2))
        m.shard_split_waiting.set(rnd.randint(0, 3))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.shutdown()
        self.server.server_close()


class PrometheusServer:
    def __init__(self, binary: str, workdir: Path, targets: list[str]) -> None:
        # The shipped example config, pointed at the target and sped up for a test.
        config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        (job,) = config["scrape_configs"]
        job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
        job["static_configs"][0]["targets"] = targets
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_until(lambda: self._ready(), "Prometheus to become ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_until(self, condition: Any, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                self.log.flush()
                log = Path(self.log.name).read_text()
                pytest.fail(f"prometheus exited with {self.process.returncode}:\\n{log}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def daemon() -> Iterator[BusyDaemon]:
    d = BusyDaemon()
    yield d
    d.close()


SUPERVISED_ROWS = 3 * 100


@pytest.fixture(scope="module")
def supervisor(endpoint: EmbeddedClickHouse) -> Iterator[Supervisor]:
    """A real supervisor that inserted 300 rows and failed one insert (unknown table)."""
    database = f"prometheus_e2e_{uuid.uuid4().hex[:8]}"
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    admin.command(f"CREATE DATABASE {database}")
    admin.command(
        f"CREATE TABLE {database}.events (id UInt64, user String) ENGINE = MergeTree "
        "ORDER BY id SETTINGS non_replicated_deduplication_window = 1000"
    )
    sup = Supervisor(f"{endpoint.url}/{database}", workers=2, max_connections=2, metrics_port=0)
    try:
        sup.start()
        futures = [
            sup.insert("events", [(n * 100 + i, f"u{i % 7}") for i in range(100)], ["id", "user"])
            for n in range(SUPERVISED_ROWS // 100)
        ]
        for future in futures:
            future.result(60)
        with pytest.raises(ServerError):
            sup.insert("missing", [(1, "x")], ["id", "user"]).result(60)
        yield sup
    finally:
        sup.stop(graceful=False)
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()


def target(url: str | None) -> str:
    assert url is not None
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def prometheus(
    prometheus_tools: tuple[str, str],
    supervisor: Supervisor,
    daemon: BusyDaemon,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(
        prometheus_tools[1],
        tmp_path_factory.mktemp("prom"),
        [target(supervisor.metrics_url), f"127.0.0.1:{daemon.port}"],
    )
    try:
        # Enough scrapes and rule evaluations for 1m rates and new-series alerts.
        records = [r["record"] for g in rule_groups() for r in g["rules"] if "record" in r]
        server.wait_until(
            lambda: all(server.query(f"{name} > 0") for name in records),
            "every recording rule to produce positive values",
        )
        yield server
    finally:
        server.close()


@pytest.mark.timeout(180)
def test_a_running_supervisors_series_come_back_through_prometheus(
    prometheus: PrometheusServer, supervisor: Supervisor
) -> None:
    instance = target(supervisor.metrics_url)
    where = f'job="chworkers", instance="{instance}"'
    prometheus.wait_until(
        lambda: bool(prometheus.query(f"chworkers_rows_inserted_total{{{where}}}")),
        "the supervisor's rows",
    )
    (rows,) = prometheus.query(f"chworkers_rows_inserted_total{{{where}}}")
    assert rows["metric"]["table"] == "events"
    assert float(rows["value"][1]) == SUPERVISED_ROWS
    (errors,) = prometheus.query(f'chworkers_errors_total{{{where}, kind="server"}}')
    assert errors["metric"]["code"] == "60"  # UNKNOWN_TABLE
    assert float(errors["value"][1]) == 1
    (pool_max,) = prometheus.query(f"chworkers_pool_connections_max{{{where}}}")
    assert float(pool_max["value"][1]) == 2
    (busy_or_idle,) = prometheus.query(f"sum(chworkers_workers{{{where}}})")
    assert float(busy_or_idle["value"][1]) == 2
    # The rules see it too: while it keeps inserting, the recording rules compute its
    # throughput and p99 insert latency from its counters and histogram.
    batches = itertools.count(SUPERVISED_ROWS // 100)

    def inserting_and_recorded() -> bool:
        n = next(batches)
        rows = [(n * 100 + i, "late") for i in range(100)]
        supervisor.insert("events", rows, ["id", "user"]).result(60)
        return all(
            prometheus.query(f"{name}{{{where}}} > 0")
            for name in (
                "job_instance_table:chworkers_rows_inserted:rate1m",
                "job_instance:chworkers_insert_duration_seconds:p99_5m",
                "job_instance:chworkers_tasks:rate5m",
            )
        )

    prometheus.wait_until(inserting_and_recorded, "recording rules over the supervisor")


def exported_names(metrics_text: str) -> set[str]:
    """Sample names an exposition has or, for labelled metrics without children yet,
    would have (from each family's type)."""
    names = set()
    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "info": ["_info"],
        "summary": ["_sum", "_count", ""],
    }
    for family in text_string_to_metric_families(metrics_text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


@pytest.mark.timeout(180)
def test_every_metric_the_dashboard_and_rules_use_is_exported_by_a_running_supervisor(
    supervisor: Supervisor,
) -> None:
    assert supervisor.metrics_url
    with urllib.request.urlopen(supervisor.metrics_url, timeout=10) as response:
        exported = exported_names(response.read().decode())
    assert "chworkers_rows_inserted_total" in exported
    used: set[str] = set()
    for _, expr in dashboard_exprs():
        used |= metric_names(expr)
    for rule in rules():
        used |= metric_names(rule["expr"])
    used -= recorded() | BUILTIN_SERIES
    # The supervisor registers the whole catalogue, the daemon's spool, dead-letter and
    # source instruments included (they stay at zero without a daemon around it).
    missing = used - exported
    assert not missing, f"used by grafana/ but not exported by a running supervisor: {missing}"


@pytest.mark.timeout(120)
def test_a_chworkers_series_comes_back_through_the_http_api(
    prometheus: PrometheusServer, daemon: BusyDaemon
) -> None:
    instance = f"127.0.0.1:{daemon.port}"
    (sample,) = prometheus.query(f'chworkers_queue_capacity{{instance="{instance}"}}')
    assert sample["metric"]["job"] == "chworkers"
    assert sample["metric"]["environment"] == "production"  # the example's target label
    assert float(sample["value"][1]) == 1000
    for info in prometheus.query("chworkers_build_info"):
        assert info["metric"]["version"] == __version__
    ups = prometheus.query('up{job="chworkers"}')
    assert [u["value"][1] for u in ups] == ["1", "1"]


@pytest.mark.timeout(120)
def test_recording_rules_produce_series(prometheus: PrometheusServer, daemon: BusyDaemon) -> None:
    groups = rule_groups()
    records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
    prometheus.wait_until(
        lambda: all(prometheus.query(name) for name in records), "every recording rule"
    )
    instance = f"127.0.0.1:{daemon.port}"
    rows = prometheus.query(
        f'job_instance_table:chworkers_rows_inserted:rate1m{{instance="{instance}"}}'
    )
    assert {s["metric"]["table"] for s in rows} == {"events", "clicks"}
    assert all(float(s["value"][1]) > 0 for s in rows)


@pytest.mark.timeout(120)
def test_every_rule_evaluates_without_errors(prometheus: PrometheusServer) -> None:
    groups = rule_groups()
    expected = {r.get("alert") or r["record"] for g in groups for r in g["rules"]}

    def evaluated() -> bool:
        loaded = prometheus.api("rules")["groups"]
        rules = [r for g in loaded for r in g["rules"]]
        return {r["name"] for r in rules} == expected and all(
            r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules
        )

    prometheus.wait_until(evaluated, "every rule to be evaluated")
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule


@pytest.mark.timeout(120)
def test_dead_letters_fire_an_alert_end_to_end(prometheus: PrometheusServer) -> None:
    def firing() -> set[str]:
        return {
            a["labels"].get("table", "")
            for a in prometheus.api("alerts")["alerts"]
            if a["labels"]["alertname"] == "ChworkersDeadLetters" and a["state"] == "firing"
        }

    prometheus.wait_until(lambda: firing() == {"events", "clicks"}, "ChworkersDeadLetters")


@pytest.mark.timeout(120)
def test_every_dashboard_query_returns_data(prometheus: PrometheusServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    substitutions = {
        "$__rate_interval": "1m",
        "$job": "chworkers",
        "$instance": ".*",
        "$table": ".*",
    }
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            queries.append((panel["title"], expr))
    empty = []
    for title, expr in queries:
        if not prometheus.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\\n" + "\\n".join(empty)
