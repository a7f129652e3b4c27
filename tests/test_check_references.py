"""``chworkers check`` says when a pipeline's files cannot be spooled by reference (the
default for files read once): on another file system than the spool, a hard link to
them cannot be made, and every batch is copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import run_chworkers


def test_check_names_files_apart_from_the_spool(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    folder = other / f"chw-check-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    try:
        (folder / "a.json").write_bytes(b'{"n":1}\n')
        (tmp_path / "b.json").write_bytes(b'{"n":2}\n')
        conf = tmp_path / "chworkers.toml"
        conf.write_text(
            f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "http://127.0.0.1:1/db"
[[pipelines]]
name = "apart"
source = "file"
paths = ["{folder}/*.json", "{tmp_path}/*.json"]
table = "ev"
[[pipelines]]
name = "copied"
source = "file"
paths = ["{folder}/*.json"]
table = "ev"
spool_data = "copy"
"""
        )
        result = run_chworkers("check", "-c", str(conf), timeout=120)
        lines = result.stdout.splitlines()
        assert "pipeline apart: 2 file(s) match" in result.stdout, result.stdout
        apart = [line for line in lines if "another file system" in line]
        assert apart == [
            "pipeline apart: 1 of them on another file system than the spool: spooled as "
            f"copies, not by reference (e.g. {folder / 'a.json'})"
        ], result.stdout
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
