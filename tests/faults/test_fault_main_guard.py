"""Regression tests: a Supervisor started where workers cannot re-import the main module
says what to do (issue 9, item 17).

With the default start method (forkserver) every worker imports the main module again.
A script without ``if __name__ == "__main__":`` started a Supervisor in each worker and
failed with "5 worker processes in a row died"; a program read from stdin failed the
same way, with a FileNotFoundError for ``<stdin>`` in the workers' stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """\
from chworkers import Supervisor

with Supervisor(workers=2, start_method={method!r}) as sup:
    print("result", sup.call(pow, 2, 10).result(60))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_script_without_the_main_guard_is_told_to_add_it(tmp_path: Path, method: str) -> None:
    script = tmp_path / "noguard.py"
    script.write_text(SCRIPT.format(method=method))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("chworkers.errors.WorkerBootError: a worker process re-imported")
    assert str(script) in last and 'if __name__ == "__main__":' in last
    assert "in a row died" not in result.stderr


@pytest.mark.timeout(120)
def test_program_from_stdin_is_refused_before_any_worker_starts() -> None:
    result = subprocess.run(
        [sys.executable, "-"],
        input=SCRIPT.format(method="forkserver"),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("chworkers.errors.ConfigError: the main program (<stdin>)")
    assert "start_method='fork'" in last
    assert "FileNotFoundError" not in result.stderr


@pytest.mark.timeout(120)
def test_the_guarded_script_and_fork_from_stdin_work(tmp_path: Path) -> None:
    script = tmp_path / "guarded.py"
    script.write_text(
        'if __name__ == "__main__":\n'
        + "".join("    " + line + "\n" for line in SCRIPT.format(method="forkserver").splitlines())
    )
    ok = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100)
    assert ok.returncode == 0 and "result 1024" in ok.stdout, ok.stderr
    piped = subprocess.run(
        [sys.executable, "-"],
        input=SCRIPT.format(method="fork"),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert piped.returncode == 0 and "result 1024" in piped.stdout, piped.stderr
