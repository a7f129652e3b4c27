"""A config file or a state directory the daemon cannot use is a clear error, not a crash.

`chworkers run -c /etc/chworkers` (a directory), a config file saved in another encoding,
or a `state_dir` that is a file, under a file or on a read-only file system ended in a
Python traceback and exit code 1 (which systemd restarts in a loop); a SIGHUP after the
file became unreadable went the same way. Each is now a configuration error naming the
path and why (exit code 3), and a reload that cannot read the file keeps the running
configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from clirun import run_chworkers
from daemonthread import Running, push_config
from tomlfile import to_toml
from waiting import wait_for

from chworkers.cli.main import main
from chworkers.daemon import config
from chworkers.daemon.statelock import state_lock
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError


@pytest.mark.parametrize("command", ["run", "check", "config"])
def test_a_directory_as_the_config_file(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "-c", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"config file {tmp_path} cannot be read: Is a directory" in err


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[clickhouse]\nurl = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: not valid TOML: not UTF-8 text \(byte 23"):
        config.load(path, env={})


def test_a_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    with (
        pytest.raises(ConfigError, match="afile is a file, not a directory") as info,
        state_lock(afile),
    ):
        pass
    assert info.value.key == "state_dir"
    with (
        pytest.raises(ConfigError, match="a part of its path is a file, not a directory"),
        state_lock(afile / "below"),
    ):
        pass


@pytest.mark.timeout(120)
def test_run_on_a_state_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    afile = tmp_path / "state"
    afile.write_text("")
    proc = run_chworkers("run", "--demo", "--state-dir", str(afile), timeout=110, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        f"chworkers: configuration error: state_dir = '{afile}' cannot be used: "
        f"{afile} is a file, not a directory"
    ) in proc.stderr


@pytest.mark.timeout(180)
def test_sighup_with_an_unreadable_config_keeps_running(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "c.toml"
    data = push_config(tmp_path / "state", f"{endpoint.url}/{database}")
    path.write_text(to_toml(data))
    caplog.set_level(logging.INFO, logger="chworkers")
    running = Running(config.load(path, env={}))
    try:
        data["supervisor"]["workers"] = 2
        path.write_bytes(to_toml(data).encode("utf-16"))
        running.daemon.request_reload()
        wait_for(
            lambda: "keeping the running configuration" in caplog.text,
            timeout=60,
            what="the refused reload",
        )
        assert running.thread.is_alive() and running.error is None, running.error
        assert "not UTF-8 text" in caplog.text
        path.write_text(to_toml(data))
        running.daemon.request_reload()
        wait_for(lambda: "SIGHUP: reloaded" in caplog.text, timeout=60, what="the reload")
    finally:
        code = running.stop()
    assert code == 0
