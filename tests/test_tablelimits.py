"""Per-table insert limits across all workers, with real worker processes and the
embedded ClickHouse behind a proxy that makes each insert take a while.

When each insert ran is recorded in the workers themselves (a middleware around every
task), so overlaps and spacing are measured where the inserts happen."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from insertwindows import most_at_once, recording, slow_tables, warm, windows

from chworkers import Cluster, Supervisor, TableLimit
from chworkers.errors import ConfigError
from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def slow(fault_proxy: FaultProxy, ch_client: Any, database: str) -> Iterator[str]:
    yield slow_tables(fault_proxy, ch_client, database)


def test_a_hot_table_held_to_one_insert_does_not_delay_the_others(
    slow: str, tmp_path: Path, ch_client: Any
) -> None:
    record = tmp_path / "windows"
    with recording(slow, record, 3, {"hot": {"max_concurrent_inserts": 1}}) as sup:
        warm(sup, record)
        hot = [sup.insert("hot", [[i]], ["n"]) for i in range(8)]
        cold = [sup.insert("cold", [[i]], ["n"]) for i in range(4)]
        assert [f.result(60) for f in hot + cold] == [1] * 12
        waiting = sup.registry.get_sample_value(
            "chworkers_table_limit_wait_seconds_count", {"table": "hot"}
        )
        stats = sup.stats().table_limits
    assert stats == {
        "hot": {
            "max_concurrent_inserts": 1,
            "max_inserts_per_second": None,
            "running": 0,
            "waiting": 0,
            "peak": 1,
        }
    }
    spans = windows(record)
    # The limit held: one insert into hot at a time, in every worker together.
    assert most_at_once(spans["hot"]) == 1
    # The cold inserts, queued behind all of hot's, went past them to the free workers:
    # all done before hot's fourth insert began.
    assert max(end for _, end in spans["cold"]) < spans["hot"][3][0]
    assert most_at_once(spans["cold"]) >= 2
    assert waiting == 9
    assert ch_client.query("SELECT count() FROM hot").result_rows[0][0] == 9
    assert ch_client.query("SELECT count() FROM cold").result_rows[0][0] == 5


def test_on_a_sharded_cluster_the_limits_hold_per_table_and_shard(
    slow: str, tmp_path: Path, fault_proxy: FaultProxy, database: str
) -> None:
    """Each shard is a server of its own: one insert at a time into hot on each shard,
    the two shards' inserts side by side (the same endpoint behind two proxies)."""
    other = FaultProxy(fault_proxy.target)
    other.set("delay", delay=0.15)
    cluster = Cluster.parse([[f"127.0.0.1:{fault_proxy.port}"], [f"127.0.0.1:{other.port}"]])
    record = tmp_path / "windows"
    limits = {"hot": {"max_concurrent_inserts": 1, "max_inserts_per_second": 20}}
    try:
        with recording(slow, record, 4, limits, shards=cluster) as sup:
            for shard in (0, 1):
                sup.insert("hot", [[100]], ["n"], shard=shard).result(60)
            record.unlink()
            futures = [sup.insert("hot", [[i]], ["n"], shard=i % 2) for i in range(12)]
            assert [f.result(60) for f in futures] == [1] * 12
            stats = sup.stats().table_limits["hot"]
    finally:
        other.close()
    spans = windows(record)
    assert most_at_once(spans["hot@0"]) == most_at_once(spans["hot@1"]) == 1
    assert most_at_once(spans["hot@0"] + spans["hot@1"]) == 2  # not one for the table
    for shard in ("hot@0", "hot@1"):  # 20 a second: 0.05 s apart on each shard
        starts = [start for start, _ in spans[shard]]
        assert min(b - a for a, b in itertools.pairwise(starts)) > 0.04
    assert stats["peak"] == 1 and stats["running"] == 0


def test_a_shard_that_is_down_holds_at_most_its_limit_of_workers(
    tmp_path: Path, fault_proxy: FaultProxy, ch_client: Any, database: str
) -> None:
    """Under Supervisor alone an insert into a dead shard holds its worker while it
    retries; with max_concurrent_inserts per table and shard, the dead shard's inserts
    hold only that many workers, the rest wait parked, and the other shard's go on
    (docs/sharding.md, "A shard that is down")."""
    ch_client.command("CREATE TABLE hot (n UInt64) ENGINE = MergeTree ORDER BY n")
    dead = FaultProxy(fault_proxy.target)
    cluster = Cluster.parse([[f"127.0.0.1:{fault_proxy.port}"], [f"127.0.0.1:{dead.port}"]])
    url = f"http://127.0.0.1:{fault_proxy.port}/{database}"
    retry = {"max_attempts": 1000, "initial_backoff": 0.05, "max_backoff": 0.2, "deadline": 6}
    record = tmp_path / "windows"
    try:
        with recording(
            url, record, 3, {"hot": {"max_concurrent_inserts": 1}}, shards=cluster, retry=retry
        ) as sup:
            for shard in (0, 1):
                sup.insert("hot", [[100]], ["n"], shard=shard).result(60)
            dead.set("reset")
            down = [sup.insert("hot", [[i]], ["n"], shard=1) for i in range(3)]
            up = [sup.insert("hot", [[i]], ["n"], shard=0) for i in range(6)]
            assert [f.result(60) for f in up] == [1] * 6
            # Shard 0's inserts all went while the first into shard 1 still retried.
            assert not any(f.done() for f in down)
            assert sup.stats().table_limits["hot"]["waiting"] == 2  # parked, no worker
            dead.set("pass")
            assert [f.result(60) for f in down] == [1] * 3
    finally:
        dead.close()
    assert ch_client.query("SELECT count() FROM hot").result_rows[0][0] == 11


def test_inserts_per_second_are_spaced_across_workers(slow: str, tmp_path: Path) -> None:
    record = tmp_path / "windows"
    with recording(slow, record, 3, {"hot": TableLimit(max_inserts_per_second=4)}) as sup:
        futures = [sup.insert("hot", [[i]], ["n"]) for i in range(6)]
        assert [f.result(60) for f in futures] == [1] * 6
    starts = [start for start, _ in windows(record)["hot"]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.25 s apart when handed to the workers; a worker picks its task up within
    # milliseconds, so allow a little for that, never the 0 s an unlimited table shows.
    assert min(gaps) > 0.2, gaps
    assert starts[-1] - starts[0] >= 5 * 0.25 - 0.05


def test_a_killed_workers_slot_comes_back(
    fault_proxy: FaultProxy, ch_client: Any, database: str, tmp_path: Path
) -> None:
    ch_client.command("CREATE TABLE hot (n UInt64) ENGINE = MergeTree ORDER BY n")
    marker = tmp_path / "pid"
    fault_proxy.set("delay", delay=2.0, times=1)  # the first insert hangs a while
    url = f"http://127.0.0.1:{fault_proxy.port}/{database}"

    class KillFirst(Middleware):
        def before_task(self, worker: WorkerContext, task: TaskInfo) -> None:
            if task.kind == "insert" and not marker.exists():
                partial = marker.with_suffix(".partial")
                partial.write_text(str(os.getpid()))
                partial.rename(marker)  # whole or absent for the test's reader

    with Supervisor(
        url,
        workers=2,
        start_method="fork",
        middleware=[KillFirst()],
        table_limits={"hot": {"max_concurrent_inserts": 1}},
    ) as sup:
        first = sup.insert("hot", [[0]], ["n"])
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(int(marker.read_text()), 9)  # mid-insert: its slot must not leak
        rest = [sup.insert("hot", [[i]], ["n"]) for i in range(1, 5)]
        assert [f.result(60) for f in [first, *rest]] == [1] * 5
        assert sup.stats().restarts == {"crashed": 1}
    assert ch_client.query("SELECT count() FROM hot").result_rows[0][0] == 5


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_concurrent_inserts"):
        Supervisor(table_limits={"t": {"max_concurrent_inserts": 0}})
    with pytest.raises(ConfigError, match="unknown setting 'max_inserts'"):
        Supervisor(table_limits={"t": {"max_inserts": 1}})
    with pytest.raises(ConfigError, match="TableLimit"):
        Supervisor(table_limits={"t": 3})  # type: ignore[dict-item]


def test_limits_change_while_running() -> None:
    with Supervisor(workers=1, start_method="fork") as sup:
        assert sup.stats().table_limits == {}
        sup.set_table_limits({"events": {"max_inserts_per_second": 2}})
        assert sup.stats().table_limits["events"]["max_inserts_per_second"] == 2.0
        sup.set_table_limits(None)
        assert sup.stats().table_limits == {}
        with pytest.raises(ConfigError, match="max_inserts_per_second"):
            sup.set_table_limits({"events": {"max_inserts_per_second": -1}})
