"""What a restart cannot fix exits with the code systemd does not restart (3), each time.

An unusable ``state_dir`` exited 3 (a configuration error) but a spool directory under it
that the daemon's user could not use exited 1, which ``Restart=on-failure`` restarts in a
loop; a positions folder it could not create or read ended in a Python traceback (exit
1), one it could not write failed every save for as long as it ran (files read again
after each restart), and a dead-letter folder or a broker's TLS file it could not use
failed only later, in the background, at each letter or connection attempt. Each is now
an :class:`UnusablePathError` (a :class:`ConfigError`) as the daemon starts, naming the
path, why and what to do: ``chworkers run`` exits 3.

Root reads and writes everything: the checks of permissions run as ``nobody``, as a
service user would, on folders left by root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run_chworkers
from tomlfile import to_toml

from chworkers.daemon.brokers.natsclient import tls_context
from chworkers.daemon.brokers.natsstream import NatsSource
from chworkers.daemon.brokers.options import NatsSourceSettings, RedisSourceSettings
from chworkers.daemon.brokers.redisclient import check_files
from chworkers.daemon.brokers.redisstream import RedisSource
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.deadletter import DeadLetters
from chworkers.errors import ConfigError, UnusablePathError

NOBODY = 65534

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can enter (pytest's are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="chworkers-exitcodes-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _run(state: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    config = tmp / "c.toml"
    config.write_text(
        to_toml(
            {
                "state_dir": str(state),
                # Nothing listens: the start does not wait for ClickHouse.
                "clickhouse": {"url": "http://127.0.0.1:9/"},
                "supervisor": {"workers": 1},
                "metrics": {"port": 0},
                "http": {"port": 0},
                "pipelines": [{"name": "p", "source": "http", "table": "ev"}],
            }
        )
    )
    return run_chworkers("run", "-c", str(config), timeout=110, cwd=tmp)


@pytest.mark.timeout(150)
# (The positions folder is made in the same step, between these two: its refusal is
# checked below, without a daemon.)
@pytest.mark.parametrize("folder", ["spool", "dead-letter"])
def test_run_exits_3_on_a_state_folder_it_cannot_use(tmp_path: Path, folder: str) -> None:
    # A file where the folder belongs: as unusable to root (these tests' user) as a
    # folder of another user's is to a service user (the checks below, as nobody).
    state = tmp_path / "state"
    state.mkdir()
    (state / folder).write_text("")
    proc = _run(state, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "chworkers: configuration error: cannot create the " in proc.stderr, proc.stderr
    assert f"{state / folder}: a file is in the way" in proc.stderr, proc.stderr
    assert "state_dir" in proc.stderr


def _as_nobody(fn: object) -> str:
    """What ``fn()`` raised (``Type: message``; ``ok`` when nothing), run as nobody."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
            try:
                fn()  # type: ignore[operator]
                said = "ok"
            except BaseException as exc:
                said = f"{type(exc).__name__}: {exc}"
            os.write(w, said.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@as_root
def test_a_positions_file_left_by_root_is_refused_at_start(shared_dir: Path) -> None:
    positions = shared_dir / "positions"
    positions.mkdir(mode=0o777)
    positions.chmod(0o777)
    (positions / "p.json").write_text("{}")
    (positions / "p.json").chmod(0o600)
    said = _as_nobody(lambda: Checkpoints(positions).load("p"))
    assert said.startswith("UnusablePathError: cannot read the positions file"), said
    assert str(positions / "p.json") in said


@as_root
def test_a_positions_folder_left_by_root_is_refused_at_start(shared_dir: Path) -> None:
    positions = shared_dir / "positions"
    positions.mkdir(mode=0o755)
    said = _as_nobody(lambda: Checkpoints(positions))
    assert said.startswith("UnusablePathError: cannot write in the positions directory"), said
    assert "Permission denied" in said and "chown" in said


@as_root
def test_a_dead_letter_table_folder_left_by_root_is_refused_at_start(shared_dir: Path) -> None:
    letters = shared_dir / "dead-letter"
    (letters / "ev").mkdir(parents=True)
    letters.chmod(0o777)
    said = _as_nobody(lambda: DeadLetters(letters).ready())
    assert said.startswith("UnusablePathError: cannot write in the dead-letter directory"), said
    assert str(letters / "ev") in said


def test_a_state_folder_on_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dead-letter").write_text("")
    with pytest.raises(UnusablePathError, match="a file is in the way") as info:
        DeadLetters(tmp_path / "dead-letter").ready()
    assert info.value.key == "state_dir"
    with pytest.raises(UnusablePathError, match="cannot create the positions directory"):
        Checkpoints(tmp_path / "dead-letter" / "positions")


def test_a_nats_tls_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    options = NatsSourceSettings(url="tls://127.0.0.1:4222", stream="s", tls_ca_file=missing)
    with pytest.raises(UnusablePathError, match=r"nats\.tls_ca_file") as info:
        tls_context(options, "pipeline 'p'")
    assert info.value.path == missing
    assert "No such file or directory" in str(info.value)


def test_a_tls_file_that_is_not_pem_names_its_setting(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    options = NatsSourceSettings(url="tls://127.0.0.1:4222", stream="s", tls_cert_file=str(bad))
    with pytest.raises(ConfigError, match=r"nats\.tls_cert_file") as info:
        tls_context(options, "pipeline 'p'")
    assert info.value.key == "nats.tls_cert_file"


def test_redis_tls_and_password_files_are_checked_when_the_source_is_made(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "ca.pem")
    options = RedisSourceSettings(url="rediss://127.0.0.1:6379", stream="s", ssl_ca_certs=missing)
    with pytest.raises(UnusablePathError, match=r"redis\.ssl_ca_certs"):
        check_files(options, "pipeline 'p'")
    secret = RedisSourceSettings(
        url="redis://127.0.0.1:6379", stream="s", password_file=str(tmp_path / "pw")
    )
    with pytest.raises(ConfigError, match="Redis password file"):
        check_files(secret, "pipeline 'p'")


def test_broker_sources_refuse_their_files_when_made(tmp_path: Path) -> None:
    """Not at the first connection, in the background: as the daemon starts."""
    missing = str(tmp_path / "ca.pem")
    nats = NatsSourceSettings(url="tls://127.0.0.1:1", stream="ev", tls_ca_file=missing)
    with pytest.raises(UnusablePathError, match=r"pipeline 'p': nats\.tls_ca_file"):
        NatsSource(
            name="p",
            table="ev",
            format="JSONEachRow",
            batcher=None,  # type: ignore[arg-type]
            options=nats,
            consumer="us",
            dead_letter=lambda records, token: None,
        )
    for cluster in (False, True):  # a cluster's client is made only at first use
        redis = RedisSourceSettings(
            url="rediss://127.0.0.1:1", stream="ev", cluster=cluster, ssl_certfile=missing
        )
        with pytest.raises(UnusablePathError, match=r"pipeline 'p': redis\.ssl_certfile"):
            RedisSource(
                name="p",
                table="ev",
                format="JSONEachRow",
                batcher=None,  # type: ignore[arg-type]
                options=redis,
                consumer="us",
                dead_letter=lambda records, token: None,
            )
