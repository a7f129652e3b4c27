"""A lambda task may use the globals of the script that submits it.

Lambdas and closures travel by dill, which pickles the globals of a function from the
main script as "the __main__ module's". A worker imported dill in the fork server, before
it imported the script again, and dill resolved "__main__" to the module it saw then:
the fork server's. So `sup.submit(lambda conn: conn.command(DDL))` failed in the worker
with `NameError: name 'DDL' is not defined` (docs/supervisor.md's own example did).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chworkers.embedded import EmbeddedClickHouse

SCRIPT = """
import sys

from chworkers import Supervisor

GREETING = "hello"


def shout(text):
    return text.upper()


def main():
    with Supervisor(sys.argv[1], workers=1, max_connections=1, metrics_port=0) as sup:
        print(sup.call(lambda: shout(GREETING) + "!").result(timeout=60))
        print(sup.submit(lambda conn, n: conn.command(f"SELECT {n} + {len(GREETING)}"), 1)
              .result(timeout=60))


if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(120)
def test_a_lambda_task_sees_the_scripts_globals(
    tmp_path: Path, endpoint: EmbeddedClickHouse
) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "script.py", endpoint.url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["HELLO!", "6"], proc.stdout
