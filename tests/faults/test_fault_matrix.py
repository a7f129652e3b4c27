"""The fault matrix: each drill ends with rows sent == rows in ClickHouse == distinct ids.

Every scenario (tests/faults/scenarios.py) runs a real ``chworkers run`` (see
harness.py), feeds it data with unique ids, breaks something at moments drawn from a
seeded random generator (the seed is in every failure report;
``CHWORKERS_FAULT_SEED=<seed>`` replays it), lets the daemon recover, and counts. Sizes
fit CI; ``benchmarks/bench_faults.py`` runs the same scenarios in a loop for minutes.
"""

from __future__ import annotations

import json

import pytest
import scenarios
from drillbase import SCHEMA, TABLE, DrillError
from harness import Drill, file_pipeline

pytestmark = pytest.mark.timeout(240)


def test_kill_9_rounds_of_the_main_process_and_the_whole_group(drill: Drill) -> None:
    scenarios.kill_9_rounds(drill)


def test_workers_killed_while_busy(drill: Drill) -> None:
    scenarios.workers_killed_while_busy(drill)


def test_sigterm_at_every_stage(drill: Drill) -> None:
    scenarios.sigterm_at_every_stage(drill)


def test_outage_longer_than_the_host_cooldown_growth(drill: Drill) -> None:
    scenarios.outage_longer_than_the_cooldown_growth(drill)


def test_small_spool_filesystem_with_clickhouse_down(drill: Drill) -> None:
    scenarios.small_spool_filesystem_with_clickhouse_down(drill)


def test_push_clients_retrying_every_non_202_under_spool_pressure(drill: Drill) -> None:
    scenarios.push_clients_under_spool_pressure(drill)


def test_clickhouse_down_at_start(drill: Drill) -> None:
    scenarios.clickhouse_down_at_start(drill)


def test_the_embedded_child_killed(own_drill: Drill) -> None:
    scenarios.embedded_child_killed(own_drill)


def test_the_drill_catches_a_duplicate_a_loss_and_a_stray_dead_letter(drill: Drill) -> None:
    """The final check itself can fail: a row twice, a row missing, an unknown dead letter."""
    feed = drill.file_feed(10, poison_every=5).write_all_now()
    daemon = drill.make_daemon([file_pipeline(feed)])  # never started: only its paths count
    client = drill.proxy.client()
    client.command(f"CREATE TABLE {TABLE} ({SCHEMA}) ENGINE = MergeTree ORDER BY id")
    client.command(f"INSERT INTO {TABLE} (id) VALUES " + ",".join(f"({i})" for i in range(8)))
    letters = daemon.state_dir / "dead-letter" / TABLE / "today.jsonl"
    letters.parent.mkdir(parents=True)
    letters.write_text("".join(json.dumps({"record": p}) + "\n" for p in feed.poison))
    drill.verify()
    client.command(f"INSERT INTO {TABLE} (id) VALUES (3)")
    with pytest.raises(DrillError, match="1 duplicated"):
        drill.verify()
    client.command(f"TRUNCATE TABLE {TABLE}")
    client.command(f"INSERT INTO {TABLE} (id) VALUES " + ",".join(f"({i})" for i in range(7)))
    with pytest.raises(DrillError, match="1 missing"):
        drill.verify()
    client.command(f"INSERT INTO {TABLE} (id) VALUES (7)")
    with letters.open("a") as fh:
        fh.write(json.dumps({"record": "not a poison line"}) + "\n")
    with pytest.raises(DrillError, match="unexpected"):
        drill.verify()
    client.close()
