"""``chworkers demo``, the README's first command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chworkers", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(180)
def test_demo_ingests_and_reports(tmp_path: Path) -> None:
    first = demo("--rows", "3000", "--batch-size", "1000", "--path", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "inserted 3,000 rows in 3 batches" in first.stdout
    assert "purchase" in first.stdout
    assert "demo.events now holds 3,000 rows" in first.stdout
    assert f"data kept in {tmp_path}" in first.stdout
    again = demo("--rows", "500", "--path", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "demo.events now holds 3,500 rows" in again.stdout


def test_demo_rejects_bad_flags() -> None:
    result = demo("--rows", "0")
    assert result.returncode == 3
    assert "--rows must be at least 1, got 0" in result.stderr
