"""Regression tests: worker processes' log records reach the supervisor's log (issue 9,
item 9).

Before the fix nothing configured logging in a worker: under forkserver and spawn the
package's NullHandler swallowed every record (the dedup-window warning included), under
fork the records went to inherited copies of the parent's handlers. Now a worker's
records travel over its result pipe and are emitted by the supervisor's handlers, in
its format, with the worker's pid and name; ``--log-format json`` keeps every line JSON.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from chworkers import Supervisor
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops import logs


def chatty_task(n: int) -> int:
    """Runs in a worker: logs as library code and third-party code do, and prints."""
    logging.getLogger("chworkers.clickhouse.dedup").warning("table t%d does not deduplicate", n)
    logging.getLogger("clickhouse_connect.driver").warning("a driver warning")
    logging.getLogger("chworkers.clickhouse.dedup").info("below the level: never sent")
    try:
        raise ValueError(f"boom {n}")
    except ValueError:
        logging.getLogger("chworkers.clickhouse.pool").exception("a failure")
    print("a stray line on stderr", file=sys.stderr, flush=True)
    logging.getLogger("chworkers.clickhouse.dedup").warning("huge %s", "x" * 1_000_000)
    return os.getpid()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_worker_records_are_emitted_by_the_supervisors_handlers(
    restore_logging: None, method: str
) -> None:
    out = io.StringIO()
    logs.configure("WARNING", "json", out)
    with Supervisor(workers=1, start_method=method) as sup:
        pid = sup.call(chatty_task, 7).result(60)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(isinstance(r, dict) for r in records)
    mine = [r for r in records if r.get("pid") == pid]
    assert pid != os.getpid()
    assert {r.get("worker") for r in mine} == {"worker-1"}
    by_message = {r["message"]: r for r in mine}
    warning = by_message["table t7 does not deduplicate"]
    assert warning["logger"] == "chworkers.clickhouse.dedup" and warning["level"] == "warning"
    assert by_message["a driver warning"]["logger"] == "clickhouse_connect.driver"
    assert "ValueError: boom 7" in by_message["a failure"]["exception"]
    assert by_message["a stray line on stderr"]["logger"] == "chworkers.stderr"
    assert "below the level: never sent" not in out.getvalue()
    huge = next(r for r in mine if r["message"].startswith("huge x"))
    assert len(huge["message"]) < 70_000 and huge["message"].endswith("more characters cut]")


@pytest.mark.timeout(120)
def test_text_format_names_the_worker(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", out)
    with Supervisor(workers=1) as sup:
        pid = sup.call(chatty_task, 8).result(60)
    text = out.getvalue()
    assert (
        f"WARNING chworkers.clickhouse.dedup[{pid} worker-1]: table t8 does not deduplicate" in text
    )
    assert "below the level: never sent" in text  # INFO is on here
    assert "ValueError: boom 8" in text


@pytest.mark.timeout(180)
def test_daemon_json_log_has_the_workers_dedup_warning_and_only_json(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    """The dedup-window warning (the only sign that exactly once does not hold) is logged
    in a worker; it must reach the daemon's log, and every line must be JSON."""
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port, database=database)
    admin.command("CREATE TABLE ev (n UInt64) ENGINE MergeTree ORDER BY n")  # window 0
    admin.close()
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{endpoint.url}/{database}"
[supervisor]
workers = 2
[metrics]
port = 0
[spool]
fsync = false
[[pipelines]]
name = "in"
source = "stdin"
table = "ev"
format = "JSONEachRow"
"""
    )
    rows = b"".join(b'{"n":%d}\n' % i for i in range(1000))
    result = subprocess.run(
        [sys.executable, "-m", "chworkers", "--log-format", "json", "run", "-c", str(conf)],
        input=rows,
        capture_output=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    lines = result.stderr.decode().splitlines()
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line in the daemon's log: {line!r}")
    dedup = [r for r in records if r["logger"] == "chworkers.clickhouse.dedup"]
    assert dedup, [r["message"] for r in records]
    assert dedup[0]["level"] == "warning" and "does not deduplicate" in dedup[0]["message"]
    daemon_pid = next(r["pid"] for r in records if r["logger"] == "chworkers.daemon.service")
    assert dedup[0]["worker"].startswith("worker-") and dedup[0]["pid"] != daemon_pid
