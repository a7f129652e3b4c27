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


def test_the_daemons_process_does_not_import_clickhouse_connect() -> None:
    """The daemon's process never opens a ClickHouse connection (its workers do): its
    modules, the supervisor's included, load no clickhouse-connect nor urllib3, which were
    about a third of its start-up imports (the fork server imports them for the workers).
    """
    code = (
        "import sys, chworkers.daemon.service, chworkers.workers.supervisor\n"
        "import chworkers.workers.forkserver as fs\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "                ('clickhouse_connect', 'urllib3'))\n"
        "assert not loaded, loaded\n"
        "assert 'chworkers.clickhouse.pool' in fs.PRELOAD\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
