"""deploy/'s systemd units, checked by systemd's own tools.

``systemd-analyze verify`` exits 0 on mere warnings, so a unit passes only if it
prints nothing at all. It also checks that every command exists and is executable:
the units run /opt/chworkers/bin/chworkers and /bin/kill, so the tests build a
filesystem root laid out as INSTALL.md's install leaves a machine (systemd's own units,
kill, the project's ``chworkers`` console script at the documented path, the units in
/etc/systemd/system) and verify against it with ``--root``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from debpackages import install

from chworkers.cli.main import EXIT_CONFIG, EXIT_USAGE, EXIT_WORKER_BOOT
from chworkers.daemon.config import Config, load
from chworkers.workers.options import SupervisorOptions

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("chworkers.service", "chworkers@.service")
# What the template is verified as: an instance, so that %i is expanded.
INSTANCES = {
    "chworkers.service": "chworkers.service",
    "chworkers@.service": "chworkers@demo.service",
}

pytestmark = pytest.mark.timeout(300)
DEFAULT_DRAIN = SupervisorOptions().graceful_timeout


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        failure = install("systemd", "systemd-analyze")
        tool = shutil.which("systemd-analyze")
        if tool is None:
            pytest.skip(f"systemd-analyze is missing and could not be installed: {failure}")
    return tool


@pytest.fixture(scope="module")
def target_root(tmp_path_factory: pytest.TempPathFactory, systemd_analyze: str) -> Path:
    """A filesystem root as a machine looks after INSTALL.md's steps."""
    root = tmp_path_factory.mktemp("target-root")
    for name in ("bin", "sbin", "lib"):  # merged /usr, as on Debian 12 and most others
        (root / name).symlink_to(f"usr/{name}")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    system_units = Path("/usr/lib/systemd/system")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    kill = shutil.which("kill", path="/usr/bin:/bin")
    assert kill, "kill(1) is needed by ExecReload"
    shutil.copy2(kill, root / "usr/bin/kill")
    # The project's own console script, where INSTALL.md's venv puts it.
    script = Path(sys.executable).parent / "chworkers"
    assert script.exists(), f"the chworkers console script is not installed at {script}"
    venv_bin = root / "opt/chworkers/bin"
    venv_bin.mkdir(parents=True)
    shutil.copy2(script, venv_bin / "chworkers")
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy2(DEPLOY / unit, units / unit)
    return root


def analyze(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "--no-pager", *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- systemd-analyze -----------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_verify_prints_nothing(systemd_analyze: str, target_root: Path, unit: str) -> None:
    for target in (f"/etc/systemd/system/{unit}", INSTANCES[unit]):
        result = analyze(systemd_analyze, "verify", f"--root={target_root}", target)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), target


@pytest.fixture
def broken_root(target_root: Path) -> Iterator[Path]:
    """The same root with a misspelled directive in a unit, cleaned up afterwards."""
    unit = target_root / "etc/systemd/system/chworkers-broken.service"
    text = (DEPLOY / "chworkers.service").read_text()
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSytem=strict"))
    yield target_root
    unit.unlink()


def test_verify_would_catch_a_mistake(systemd_analyze: str, broken_root: Path) -> None:
    """The check above cannot pass vacuously: a typo prints a warning (and exits 0)."""
    result = analyze(
        systemd_analyze,
        "verify",
        f"--root={broken_root}",
        "/etc/systemd/system/chworkers-broken.service",
    )
    assert "Unknown key" in result.stdout + result.stderr


def test_verify_checks_the_executable_exists(systemd_analyze: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(Path("/usr/lib/systemd/system"), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(DEPLOY / "chworkers.service", root / "etc/systemd/system")
    result = analyze(
        systemd_analyze, "verify", f"--root={root}", "/etc/systemd/system/chworkers.service"
    )
    assert "/opt/chworkers/bin/chworkers is not executable" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_at_most_ok(
    systemd_analyze: str, target_root: Path, unit: str
) -> None:
    result = analyze(
        systemd_analyze, "security", "--offline=yes", f"--root={target_root}", INSTANCES[unit]
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", output)
    assert match, output
    score, level = float(match[1]), match[2]
    assert level in {"SAFE", "OK"}, output
    assert score < 2.0, output


# --- what the units promise ----------------------------------------------------------


def directives(unit: str) -> dict[str, list[str]]:
    """``Key=value`` assignments of a unit file, by key, in order (comments dropped)."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(tool: str, span: str) -> float:
    """A systemd time span in seconds, as systemd itself parses it."""
    result = analyze(tool, "timespan", span)
    assert result.returncode == 0, result.stderr
    match = re.search(r"μs: (\d+)", result.stdout)
    assert match, result.stdout
    return int(match[1]) / 1_000_000


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_the_required_settings(unit: str) -> None:
    d = directives(unit)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "Restart": ["on-failure"],
        "KillMode": ["mixed"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "DynamicUser": ["yes"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    for key, values in expected.items():
        assert d.get(key) == values, key
    # Exit codes that restarting cannot fix (chworkers.cli.main's, documented in the README).
    assert d["RestartPreventExitStatus"] == [f"{EXIT_USAGE} {EXIT_CONFIG} {EXIT_WORKER_BOOT}"]
    for key in ("WatchdogSec", "EnvironmentFile", "StateDirectory", "RuntimeDirectory"):
        assert d.get(key), key
    assert d["ExecStart"][0].startswith("/opt/chworkers/bin/chworkers run -c /etc/chworkers/")
    assert d["EnvironmentFile"][0].startswith("-/etc/chworkers/")  # optional: may not exist


def test_template_differs_only_in_the_instance_parts() -> None:
    plain, template = directives("chworkers.service"), directives("chworkers@.service")
    per_instance = {
        "Description",
        "ExecStart",
        "EnvironmentFile",
        "StateDirectory",
        "RuntimeDirectory",
    }
    assert plain.keys() == template.keys()
    for key in plain.keys() - per_instance:
        assert plain[key] == template[key], key
    for key in per_instance:
        assert "%i" in template[key][0], key
    assert template["StateDirectory"] == ["chworkers/%i"]
    assert template["RuntimeDirectory"] == ["chworkers/%i"]


def example_config() -> Config:
    """deploy/chworkers.toml through the daemon's own loader, as systemd would run it."""
    return load(DEPLOY / "chworkers.toml", env={"STATE_DIRECTORY": "/var/lib/chworkers"})


@pytest.mark.parametrize("unit", UNITS)
def test_timeouts_fit_the_drain_and_the_watchdog(systemd_analyze: str, unit: str) -> None:
    d = directives(unit)
    stop = seconds(systemd_analyze, d["TimeoutStopSec"][0])
    # The drain must finish, and the supervisor then stop its workers, before SIGKILL:
    # with the example's graceful_timeout and with the default one.
    for drain in (example_config().settings.supervisor.graceful_timeout, DEFAULT_DRAIN):
        assert stop >= drain + 15, (stop, drain)
    watchdog = seconds(systemd_analyze, d["WatchdogSec"][0])
    assert 10 <= watchdog <= 120
    assert seconds(systemd_analyze, d["RestartSec"][0]) >= 1


def test_example_config_loads_with_the_daemons_own_validation() -> None:
    config = example_config()
    s = config.settings
    assert config.state_dir == Path("/var/lib/chworkers")  # from systemd's StateDirectory=
    assert s.clickhouse.password is None, "secrets belong in the EnvironmentFile"
    assert s.clickhouse.pool.max_connections == 4
    assert s.clickhouse.pool.retry.max_attempts == 8
    assert s.clickhouse.pool.retry.initial_backoff == 0.5
    assert s.supervisor.graceful_timeout == 60
    assert s.spool.policy == "block" and s.spool.max_bytes == 2 * 1024**3
    assert (s.metrics.host, s.metrics.port) == ("127.0.0.1", 9363)
    assert {p.source for p in config.pipelines} == {"http", "file"}
    # The table the example creates deduplicates replayed batches.
    (created,) = [p.create_statement() for p in config.pipelines if p.create]
    assert created is not None and "non_replicated_deduplication_window" in created


def test_example_secrets_come_from_the_environment_file() -> None:
    env = {
        "STATE_DIRECTORY": "/var/lib/chworkers",
        "CHWORKERS_CLICKHOUSE_PASSWORD": "s3cret",
        "CHWORKERS_HTTP_TOKEN": "t0ken",
    }
    settings = load(DEPLOY / "chworkers.toml", env=env).settings
    assert settings.clickhouse.password == "s3cret"
    assert settings.http.token == "t0ken"


def test_example_config_matches_the_prometheus_scrape_example() -> None:
    s = example_config().settings
    scrape = (ROOT / "grafana" / "prometheus" / "prometheus.yml").read_text()
    assert f"{s.metrics.host}:{s.metrics.port}" in scrape
