"""The daemon's commands as a user runs them: run --demo, check, config."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chclients import make_client
from clirun import run_chworkers
from waiting import wait_for

from chworkers import ChworkersError, ConnectionConfig, ConnectionPool, ServerError
from chworkers.daemon import config as config_module
from chworkers.daemon.generator import GENERATOR_SCHEMA
from chworkers.daemon.service import Daemon
from chworkers.daemon.statelock import state_lock
from chworkers.embedded import EmbeddedClickHouse


@pytest.mark.timeout(240)
def test_run_demo_ingests_reports_and_appends(tmp_path: Path) -> None:
    state = str(tmp_path / "demo")
    first = run_chworkers("run", "--demo", "--rows", "20000", "--state-dir", state)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "demo_events now holds 20,000 rows" in out
    assert "purchase" in out and "avg(value)" in out
    assert "metrics were served at http://127.0.0.1:" in out
    assert "inserted 20,000 rows in" in out
    assert "spool: 0 batches left" in out
    again = run_chworkers("run", "--demo", "--rows", "5000", "--state-dir", state)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "demo_events now holds 25,000 rows" in again.stdout


def test_run_without_config_says_what_to_do() -> None:
    result = run_chworkers("run")
    assert result.returncode == 2  # wrong usage (README: exit codes)
    assert "give a config file (-c FILE) or try --demo" in result.stderr


def test_bad_config_exits_3_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[spool]\npolicy = 'sometimes'\n")
    for command in ("run", "check"):
        result = run_chworkers(command, "-c", str(conf))
        assert result.returncode == 3
        assert "spool.policy = 'sometimes' is invalid" in result.stderr
        assert "Traceback" not in result.stderr


def test_config_defaults_and_reference() -> None:
    defaults = run_chworkers("config", "--defaults")
    assert defaults.returncode == 0
    assert "[clickhouse.pool.retry]" in defaults.stdout
    assert "# env: CHWORKERS_SPOOL_MAX_BYTES" in defaults.stdout
    reference = run_chworkers("config", "--reference")
    committed = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert reference.stdout == committed


def test_config_shows_effective_settings_without_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[clickhouse]\nurl = "http://h:8123/db"\npassword = "hunter2"\n[http]\ntoken = "t0k"\n'
    )
    result = run_chworkers("config", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["settings"]["clickhouse"]["password"] == "***"
    assert shown["settings"]["http"]["token"] == "***"
    assert "hunter2" not in result.stdout and "t0k" not in result.stdout


def test_check_reaches_clickhouse_and_reports_tables(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[clickhouse]
url = "{endpoint.url}/{database}"
[[pipelines]]
name = "declared"
table = "created_on_run"
create = "n UInt64"
[[pipelines]]
name = "missing"
table = "nowhere"
"""
    )
    admin = make_client(endpoint, database=database)
    try:  # an existing table with a view whose target does not deduplicate
        admin.command("CREATE TABLE ev (n UInt64) ENGINE = MergeTree ORDER BY n")
        admin.command("CREATE TABLE raw (n UInt64) ENGINE = MergeTree ORDER BY n")
        admin.command("CREATE MATERIALIZED VIEW mv TO raw AS SELECT n FROM ev")
    finally:
        admin.close()
    with conf.open("a") as f:
        f.write('[[pipelines]]\nname = "viewed"\ntable = "ev"\n')
    result = run_chworkers("check", "-c", str(conf))
    assert (
        f"pipeline viewed: materialized view {database}.mv writes to {database}.raw "
        "(MergeTree), which does not deduplicate" in result.stdout
    )
    assert "configuration is valid (3 pipelines)" in result.stdout
    assert "answers (version" in result.stdout
    assert "created_on_run missing; `run` creates it" in result.stdout
    assert "nowhere MISSING" in result.stdout
    assert result.returncode == 1


def test_check_logs_as_the_log_section_says_unless_a_flag_overrides(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[clickhouse]\nurl = "{endpoint.url}/{database}"\n[log]\nlevel = "DEBUG"\n'
        'format = "json"\n[[pipelines]]\nname = "p"\nsource = "http"\ntable = "ev"\n'
        'create = "n UInt64"\n'
    )
    result = run_chworkers("check", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(r["level"] == "debug" for r in records)  # clickhouse-connect's requests
    result = run_chworkers("--log-level", "INFO", "check", "-c", str(conf), "--log-format", "text")
    assert result.returncode == 0, result.stderr
    assert not any(line.startswith("{") or " DEBUG " in line for line in result.stderr.splitlines())


def test_config_hides_a_password_in_the_url_and_lists_sets(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[clickhouse]\nurl = "http://bob:s3cret@h1:8123,h2:8123/db?password=other&x=1"\n'
    )
    result = run_chworkers("config", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout and "other" not in result.stdout
    assert "frozenset" not in result.stdout
    shown = json.loads(result.stdout)
    clickhouse = shown["settings"]["clickhouse"]
    assert clickhouse["url"] == "http://bob:***@h1:8123,h2:8123/db?password=***&x=1"
    retry = clickhouse["pool"]["retry"]
    assert retry["retry_statuses"] == [429, 502, 503, 504]
    assert retry["retry_codes"] == sorted(retry["retry_codes"]) and 159 in retry["retry_codes"]
    assert "history" not in retry


def embedded_config(tmp_path: Path, pipelines: str = "", extra: str = "") -> Path:
    conf = tmp_path / "c.toml"
    conf.write_text(f'state_dir = "{tmp_path / "state"}"\n{extra}\n{pipelines}')
    return conf


@pytest.mark.timeout(120)
def test_check_starts_the_embedded_endpoint_and_lists_its_tables(tmp_path: Path) -> None:
    pipelines = '[[pipelines]]\nname = "p"\ntable = "ev"\nsource = "generator"\n'
    conf = embedded_config(tmp_path, pipelines, '[clickhouse]\npassword = "pw"\n')
    fresh = run_chworkers("check", "-c", str(conf))
    assert "no embedded data" in fresh.stdout and "answers (version" in fresh.stdout
    assert "table ev MISSING" in fresh.stdout and fresh.returncode == 1
    assert not (tmp_path / "state").exists()  # a check leaves no state behind
    with EmbeddedClickHouse(tmp_path / "state" / "clickhouse") as ch:
        pool = ConnectionPool(ch.url, {"min_connections": 0, "max_connections": 1})
        pool.with_connection(lambda c: c.command("CREATE TABLE ev (n UInt64) ENGINE Log"))
        pool.close()
    existing = run_chworkers("check", "-c", str(conf))
    assert existing.returncode == 0, existing.stdout + existing.stderr
    assert "clickhouse: 1 table(s) in default: ev" in existing.stdout
    assert "pipeline p: table ev exists" in existing.stdout
    with state_lock(tmp_path / "state"):  # a daemon runs on it: leave its endpoint alone
        busy = run_chworkers("check", "-c", str(conf))
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert f"belongs to the running daemon (chworkers pid {os.getpid()})" in busy.stdout


def test_check_says_when_a_file_glob_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("{}\n")
    files = "".join(
        f'[[pipelines]]\nname = "{name}"\ntable = "ev"\nsource = "file"\n'
        f'paths = ["{tmp_path}/{pattern}"]\nfollow = {follow}\n'
        for name, pattern, follow in (
            ("found", "*.log", "false"),
            ("later", "*.json", "true"),
            ("never", "*.csv", "false"),
        )
    )
    conf = embedded_config(tmp_path, files, "[clickhouse.embedded]\nport = 0\n")
    (tmp_path / "state" / "clickhouse").mkdir(parents=True)  # check may start it here
    result = run_chworkers("check", "-c", str(conf))
    assert f"pipeline found: 1 file(s) match {tmp_path}/*.log" in result.stdout
    assert "pipeline later: no file matches" in result.stdout and "yet" in result.stdout
    assert f"pipeline never: NO FILE matches {tmp_path}/*.csv" in result.stdout
    assert result.returncode == 1


@pytest.mark.timeout(120)
def test_the_daemons_embedded_endpoint_requires_the_configured_password(
    tmp_path: Path,
) -> None:
    cfg = config_module.load(
        data={
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {"password": "pw", "pool": {"retry": {"max_attempts": 1}}},
            "supervisor": {"workers": 1},
            "metrics": {"port": None},
            "spool": {"fsync": False},
            "pipelines": [
                {
                    "name": "g",
                    "source": "generator",
                    "generator_count": 100,
                    "table": "ev",
                    "create": GENERATOR_SCHEMA,
                    "engine": "MergeTree ORDER BY ts",
                }
            ],
        },
        env={},
    )
    seen: dict[str, Any] = {}

    def before_stop(daemon: Daemon) -> None:
        url = daemon.clickhouse_url
        assert url is not None
        for name, password in (("without", ""), ("with", "pw")):
            pool = ConnectionPool(
                dataclasses.replace(ConnectionConfig.coerce(url), password=password),
                {"min_connections": 0, "max_connections": 1, "retry": {"max_attempts": 1}},
            )
            try:
                seen[name] = pool.with_connection(lambda c: c.command("SELECT count() FROM ev"))
            except ChworkersError as exc:
                seen[name] = exc
            finally:
                pool.close()

    daemon = Daemon(cfg)
    daemon.before_stop = before_stop
    assert daemon.run() == 0
    assert isinstance(seen["without"], ServerError) and seen["without"].code == 516
    assert seen["with"] == 100


def test_a_bad_url_is_refused_when_read_without_showing_its_password(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[clickhouse]\nurl = "htp://bob:s3cret@h:8123/db"\n')
    for command in ("config", "check"):
        result = run_chworkers(command, "-c", str(conf))
        assert result.returncode == 3, result.stdout + result.stderr
        assert "clickhouse.url: connection option url: 'htp://bob:***@h:8123/db'" in result.stderr
        assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_run_logs_as_the_configs_log_section_says_unless_a_flag_overrides(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}/{database}"
[supervisor]
workers = 1
[metrics]
port = 0
[log]
format = "json"
level = "DEBUG"
[[pipelines]]
name = "in"
source = "stdin"
table = "ev"
create = "n UInt64"
"""
    )

    def run(*flags: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "chworkers", *flags, "run", "-c", str(conf)],
            input='{"n":1}\n',
            capture_output=True,
            text=True,
            timeout=100,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr.splitlines()

    from_file = run()
    records = [json.loads(line) for line in from_file]
    assert any(r["level"] == "debug" for r in records)
    assert any(r["message"].startswith("chworkers running") for r in records)
    overridden = run("--log-format", "text", "--log-level", "INFO")
    assert any(" INFO chworkers.daemon.service[" in line for line in overridden)
    assert not any(line.startswith("{") or " DEBUG " in line for line in overridden)


@pytest.mark.timeout(180)
def test_sighup_applies_a_new_log_level_to_the_daemon_and_its_workers(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    port = _free_port()
    conf = tmp_path / "c.toml"
    text = f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}/{database}"
[supervisor]
workers = 1
[metrics]
port = 0
[http]
port = {port}
[log]
level = "INFO"
[[pipelines]]
name = "push"
source = "http"
table = "ev"
create = "n UInt64"
max_delay = "100ms"
"""
    conf.write_text(text)
    log_file = tmp_path / "daemon.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "run", "-c", str(conf)], stderr=out
        )
    try:
        wait_for(
            lambda: b"chworkers running" in log_file.read_bytes(),
            60,
            interval=0.1,
            what="the daemon",
        )
        _push(port, b'{"n":1}\n')
        client = ConnectionPool(f"{endpoint.url}/{database}", {"min_connections": 0})
        wait_for(
            lambda: client.with_connection(lambda c: c.command("SELECT count() FROM ev")) == 1,
            60,
            interval=0.1,
            what="row 1",
        )
        client.close()
        assert b" DEBUG " not in log_file.read_bytes()
        conf.write_text(text.replace('level = "INFO"', 'level = "DEBUG"'))
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: b"SIGHUP: log level now DEBUG" in log_file.read_bytes(),
            60,
            interval=0.1,
            what="the reload",
        )
        _push(port, b'{"n":2}\n')
        # The worker logs each insert it sends at DEBUG (chworkers.clickhouse.driver).
        wait_for(
            lambda: any(
                " DEBUG chworkers.clickhouse.driver" in line and " worker-" in line
                for line in log_file.read_text().splitlines()
            ),
            60,
            interval=0.1,
            what="a worker's DEBUG record",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _free_port() -> int:
    from chworkers.freeport import free_port

    return free_port("127.0.0.1")


def _push(port: int, body: bytes) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/ingest/ev", data=body)
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202


def test_check_reports_every_shard_and_replica(
    tmp_path: Path,
    shard_endpoints: tuple[EmbeddedClickHouse, ...],
    shard_database: str,
) -> None:
    a, b, c = shard_endpoints
    for ch in (a, c):  # shard 1 lacks the table
        pool = ConnectionPool(f"{ch.url}/{shard_database}", {"max_connections": 1})
        try:
            pool.with_connection(
                lambda conn: conn.command("CREATE TABLE ev (n UInt64) ENGINE = Memory")
            )
        finally:
            pool.close()
    import socket

    with socket.socket() as closed:  # a port nobody listens on: a replica that is down
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
[clickhouse]
shards = [["{a.url}"], ["{b.url}"], ["{c.url}", "{down}"]]
shard_weights = [1, 2, 1]
database = "{shard_database}"
[[pipelines]]
name = "p"
table = "ev"
sharding_key = "n"
[[pipelines]]
name = "q"
table = "ev"
sharding_key = "sipHash64(nope)"
"""
    )
    result = run_chworkers("check", "-c", str(conf))
    out = result.stdout
    assert "shard 0 (weight 1): 1 replica(s)" in out
    assert "shard 1 (weight 2): 1 replica(s)" in out
    assert "shard 2 (weight 1): 2 replica(s)" in out
    assert f"shard 0 replica {a.url}: answers (version" in out
    assert "ev exists (sharding key n fits its columns)" in out
    assert "ev exists (SHARDING KEY DOES NOT FIT: sharding_key 'sipHash64(nope)'" in out
    assert "no column 'nope'" in out
    assert f"shard 1 replica {b.url}: answers" in out and "ev MISSING" in out
    assert f"shard 2 replica {down}: DOES NOT ANSWER" in out
    assert result.returncode == 1
