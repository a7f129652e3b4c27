"""`run` without anything to run is a usage error, and a file without pipelines a
configuration error that `check` reports as well.

`chworkers run` with neither `-c` nor `--demo` exited 1 ("a runtime failure") where the
README's table says 2 is wrong usage of the command line; a config file without
`[[pipelines]]` made `run` exit 1 while `check` called it valid (exit 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chworkers.cli.main import main


def test_run_with_nothing_to_run_is_wrong_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "chworkers run: error: nothing to run: give a config file (-c FILE)" in err


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_file_without_pipelines_is_invalid(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[clickhouse]\nurl = "http://127.0.0.1:1/db"\n')
    assert main([command, "-c", str(path)]) == 3
    err = capsys.readouterr().err
    assert f"configuration error: {path}: no [[pipelines]] configured; nothing to ingest" in err
