from __future__ import annotations

import subprocess
import sys

from clirun import run_chworkers

import chworkers


def test_version() -> None:
    result = run_chworkers("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"chworkers {chworkers.__version__}"


def test_help_lists_commands() -> None:
    result = run_chworkers("--help")
    assert result.returncode == 0
    assert "usage: chworkers" in result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = run_chworkers()
    assert result.returncode == 2
    assert "usage: chworkers" in result.stdout


def test_the_command_line_loads_only_what_its_commands_need_up_front() -> None:
    """Registering the subcommands imports no endpoint machinery, no supervisor and no
    daemon service: ``chworkers run`` imports what it runs when it runs it, so start-up
    (issue 11's 0.5 s readiness target) does not pay for ``chworkers embedded``."""
    code = (
        "import sys, chworkers.cli.main\n"
        "main = sys.modules['chworkers.cli.main']\n"
        "main.build_parser()\n"
        "heavy = {'chdb', 'chworkers.embedded.server', 'chworkers.embedded.handler',\n"
        "         'chworkers.embedded.process', 'chworkers.workers.supervisor',\n"
        "         'chworkers.daemon.service'}\n"
        "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
