"""Every Python example in the README and docs/ runs as printed.

A user copies an example into a file and runs it. The README's inserted the rows of
`SELECT 1` (one column) into three, and supervisor.md's started a Supervisor at a
script's top level (a WorkerBootError under the default forkserver) and used names it
never defined. Each ```python block now runs here as a script of its own, against the
embedded ClickHouse: its connection URLs (those naming a database, `.../db`) point at a
fresh database of the session's endpoint, and `/tmp/ch-data` at a temporary directory.
A block fenced ```python fragment continues the text around it (a cluster of servers,
a `sup` in scope) and is only compiled.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chworkers.embedded import EmbeddedClickHouse

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python( fragment)?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: A connection URL naming a database: the examples' servers.
SERVER_URL = re.compile(r'"http://[^"]*:8123/db"')


def blocks() -> list[tuple[str, bool, str]]:
    """(where, runnable, code) of every ```python block of the README and docs/."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", not match.group(1), match.group(2)))
    return found


EXAMPLES = blocks()
#: What a runnable example must print (its own comments say so).
PRINTS = {
    "README.md": ["2\n", "/metrics\n"],
    "docs/supervisor.md": ["3\n", "/metrics\n"],
}


def test_the_docs_have_runnable_examples() -> None:
    runnable = [where for where, run, _ in EXAMPLES if run]
    assert {w.split(":")[0] for w in runnable} >= {
        "README.md",
        "docs/pool.md",
        "docs/supervisor.md",
        "docs/embedded.md",
        "docs/sharding.md",
    }, runnable


@pytest.mark.parametrize(
    ("where", "code"), [(w, c) for w, run, c in EXAMPLES if not run], ids=lambda v: str(v)[:30]
)
def test_fragments_compile(where: str, code: str) -> None:
    compile(code, where, "exec")


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("where", "code"), [(w, c) for w, run, c in EXAMPLES if run], ids=lambda v: str(v)[:30]
)
def test_example_runs_as_printed(
    where: str, code: str, tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    script = SERVER_URL.sub(f'"{endpoint.url}/{database}"', code)
    script = script.replace('"/tmp/ch-data"', repr(str(tmp_path / "ch-data")))
    (tmp_path / "example.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, f"{where}:\n{script}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for expected in PRINTS.get(where.split(":")[0], []):
        assert expected in proc.stdout, (where, proc.stdout)
