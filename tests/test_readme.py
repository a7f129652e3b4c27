"""The README's test command is what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip().startswith("python3 -m venv")
    ]
    assert len(ci_lines) == 1
    ci = ci_lines[0].replace(" -q", "")
    readme = (ROOT / "README.md").read_text().replace(" -q", "")
    assert ci in readme
