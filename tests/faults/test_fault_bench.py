"""``chworkers bench`` keeps what it measured when one comparison fails.

A full run takes many minutes; one family failing (a path that raises, workers that
cannot boot because the code changed under a long run) used to end the command with
that error alone, and every result measured before it was lost. Now the failure is
said, the other families still run, the table and the JSON hold all they measured, and
the exit code is 1.
"""

from __future__ import annotations

import json
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from chworkers.bench import cli as bench_cli
from chworkers.bench.runner import Group
from chworkers.cli.main import main
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BenchError


def test_a_failing_family_loses_none_of_the_others(
    endpoint: EmbeddedClickHouse,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
    tmp_path: Path,
) -> None:
    broken = types.ModuleType("chworkers.bench.broken")

    def groups(env: Any, stack: Any) -> list[Group]:
        raise BenchError("the broken family cannot start")

    broken.groups = groups  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chworkers.bench.broken", broken)
    # Listed first: it fails before the real one runs.
    monkeypatch.setattr(bench_cli, "FAMILIES", {"broken": "fails", **bench_cli.FAMILIES})
    db = f"bench_{uuid.uuid4().hex[:12]}"
    out = tmp_path / "bench.json"
    args = ["bench", "--url", endpoint.url, "--database", db, "--json", str(out)]
    args += ["--rounds", "1", "--lease-trips", "20", "--only", "broken", "--only", "lease"]
    assert main(args) == 1

    printed = capsys.readouterr().out
    assert "LeaseBroker acquire+release" in printed
    assert "broken: FAILED: BenchError: the broken family cannot start" in printed
    doc = json.loads(out.read_text())
    assert {r["group"].split(":")[0] for r in doc["results"]} == {"lease"}
    assert doc["options"]["failed"] == {"broken": "BenchError: the broken family cannot start"}
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        assert admin.command(f"EXISTS DATABASE {db}") == 0
    finally:
        admin.close()
