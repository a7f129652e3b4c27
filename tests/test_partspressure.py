"""Too many parts: the daemon slows down and grows batches while a table's merges fall
behind, and returns to normal after (chworkers/daemon/partspressure.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import Running, daemon_config
from prometheus_client import CollectorRegistry
from waiting import wait_for

from chworkers.daemon import config
from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.options import PartsSettings, SpoolSettings
from chworkers.daemon.partspressure import (
    PartsPressure,
    PartsState,
    is_too_many_parts,
    worst_of,
)
from chworkers.daemon.spool import Spool
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import ConfigError, RetriesExhaustedError, ServerError
from chworkers.ops.metrics import Metrics

PARTS = ServerError(
    "Code: 252. DB::Exception: Too many parts (10 with average size of 1 KiB) in table 'ev'. "
    "Merges are processing significantly slower than inserts. (TOO_MANY_PARTS)",
    code=252,
    name="TOO_MANY_PARTS",
)
PARTITIONS = ServerError(
    "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 3). "
    "(TOO_MANY_PARTS)",
    code=252,
    name="TOO_MANY_PARTS",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_slows_down_with_hysteresis_and_returns_to_normal() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    pressure = PartsPressure(
        PartsSettings(check_interval=1, cooldown=10, max_factor=4, min_interval=2),
        metrics=Metrics(registry),
        clock=clock,
    )
    pressure.watch("ev")
    base = BatchLimits(max_rows=100, max_delay=1.0)
    assert pressure.limits("ev", base) is base and pressure.delay("ev", 0) == 0

    def factor() -> float | None:
        return registry.get_sample_value("chworkers_parts_batch_factor", {"table": "ev"})

    assert factor() == 1
    pressure.checked("ev", PartsState(parts=400, delay_at=1000, throw_at=3000))  # 0.4: fine
    assert pressure.factor("ev") == 1
    pressure.checked("ev", PartsState(parts=500, delay_at=1000, throw_at=3000))  # 0.5: slow
    assert pressure.factor("ev") == 2 and factor() == 2
    assert pressure.limits("ev", base) == BatchLimits(max_rows=200, max_delay=2.0)
    # One insert at a time, factor / 2 * min_interval apart.
    assert pressure.delay("ev", 1) > 0
    pressure.sent("ev")
    assert pressure.delay("ev", 0) == pytest.approx(2.0)
    clock.now += 2
    assert pressure.delay("ev", 0) == 0
    pressure.failed("ev", RetriesExhaustedError("gave up", attempts=5, last_error=PARTS))
    assert pressure.factor("ev") == 4
    pressure.failed("ev", PARTS)
    assert pressure.factor("ev") == 4  # max_factor
    assert registry.get_sample_value("chworkers_too_many_parts_total", {"table": "ev"}) == 2
    assert registry.get_sample_value("chworkers_parts_slowdowns_total", {"table": "ev"}) == 1
    # Between recover_at and slow_down_at: held. Below recover_at: halved per cooldown.
    pressure.checked("ev", PartsState(parts=300, delay_at=1000, throw_at=3000))
    clock.now += 60
    pressure.checked("ev", PartsState(parts=300, delay_at=1000, throw_at=3000))
    assert pressure.factor("ev") == 4
    pressure.checked("ev", PartsState(parts=100, delay_at=1000, throw_at=3000))
    clock.now += 9
    pressure.checked("ev", PartsState(parts=100, delay_at=1000, throw_at=3000))
    assert pressure.factor("ev") == 4  # not calm for the cooldown yet
    clock.now += 1
    pressure.checked("ev", PartsState(parts=100, delay_at=1000, throw_at=3000))
    assert pressure.factor("ev") == 2
    clock.now += 10
    pressure.checked("ev", PartsState(parts=100, delay_at=1000, throw_at=3000))
    assert pressure.factor("ev") == 1 and factor() == 1
    assert pressure.limits("ev", base) is base
    assert registry.get_sample_value("chworkers_table_active_parts", {"table": "ev"}) == 100


def test_the_batcher_cuts_a_slowed_tables_batches_larger(tmp_path: Path) -> None:
    clock = Clock()
    pressure = PartsPressure(PartsSettings(max_factor=4), clock=clock)
    pressure.watch("ev")
    batches: list[int] = []
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    batcher = Batcher(
        spool,
        lambda b: batches.append(b.rows),
        limits=BatchLimits(max_rows=10, max_delay=60),
        adjust=pressure.limits,
    )
    try:
        for _ in range(20):
            batcher.add("ev", b'{"n":1}\n', 1, format="JSONEachRow")
        pressure.failed("ev", PARTS)
        pressure.failed("ev", PARTS)
        for _ in range(40):
            batcher.add("ev", b'{"n":1}\n', 1, format="JSONEachRow")
        batcher.flush()
    finally:
        batcher.close(5)
        spool.close()
    assert batches == [10, 10, 40]


def test_only_too_many_parts_slows_down() -> None:
    assert is_too_many_parts(PARTS)
    assert is_too_many_parts(RetriesExhaustedError("x", attempts=5, last_error=PARTS))
    assert not is_too_many_parts(PARTITIONS)  # split by partition instead
    assert not is_too_many_parts(ServerError("no table", code=60, name="UNKNOWN_TABLE"))
    pressure = PartsPressure(PartsSettings())
    pressure.failed("ev", PARTITIONS)
    assert pressure.factor("ev") == 1


def test_checks_are_due_per_interval() -> None:
    clock = Clock()
    pressure = PartsPressure(PartsSettings(check_interval=5), clock=clock)
    pressure.watch("a")
    pressure.watch("b")
    assert pressure.due() == ["a", "b"]
    assert pressure.due() == []  # in flight
    pressure.checked("a", None)
    clock.now += 5
    assert pressure.due() == ["a"]
    assert PartsPressure(PartsSettings(check_interval=0)).due() == []


def test_recover_at_must_be_below_slow_down_at() -> None:
    with pytest.raises(ConfigError, match=r"recover_at = 0\.6 must be below slow_down_at"):
        PartsSettings(slow_down_at=0.5, recover_at=0.6)


@pytest.mark.timeout(180)
def test_daemon_adapts_to_too_many_parts_and_loses_nothing(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    # Merges stopped and a small parts_to_throw_insert: ClickHouse refuses inserts for
    # real (TOO_MANY_PARTS) until the merges run again.
    ch_client.command(
        "CREATE TABLE ev (n UInt64, s String) ENGINE = MergeTree ORDER BY n "
        "SETTINGS parts_to_delay_insert = 4, parts_to_throw_insert = 12, "
        "non_replicated_deduplication_window = 1000"
    )
    ch_client.command("SYSTEM STOP MERGES ev")
    rows, step = 1500, 50
    path = tmp_path / "in.json"
    path.write_bytes(b"")
    data: dict[str, Any] = daemon_config(
        tmp_path / "state",
        f"{endpoint.url}/{database}",
        {"source": "file", "paths": [str(path)], "follow": True, "poll_interval": 0.01},
    )
    data["pipelines"][0].update(max_rows=step, max_delay=0.05)
    data["pipelines"][0].pop("create")
    data["parts"] = {
        "check_interval": 0.1,
        "cooldown": 0.3,
        "min_interval": 0.01,
        "recover_at": 0.3,
    }
    running = Running(config.load(data=data, env={}))
    registry = running.daemon.metrics.registry

    def sample(name: str) -> float:
        return registry.get_sample_value(name, {"table": "ev"}) or 0.0

    def write() -> None:
        with open(path, "ab") as f:
            for start in range(0, rows, step):
                f.write(
                    b"".join(
                        b'{"n":%d,"s":"row %d"}\n' % (i, i) for i in range(start, start + step)
                    )
                )
                f.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_for(lambda: sample("chworkers_too_many_parts_total") >= 1, timeout=60)
        assert sample("chworkers_parts_slowdowns_total") >= 1
        assert sample("chworkers_parts_batch_factor") > 1
        assert sample("chworkers_table_parts_to_delay_insert") == 4
        writer.join()
        ch_client.command("SYSTEM START MERGES ev")
        ch_client.command("OPTIMIZE TABLE ev FINAL")
        wait_for(lambda: ch_client.command("SELECT count() FROM ev") >= rows, timeout=90)
        ch_client.command("OPTIMIZE TABLE ev FINAL")  # the merges catch up
        # Merged to one part (1 / 4 < recover_at): back to normal after the cooldowns.
        wait_for(lambda: sample("chworkers_parts_batch_factor") == 1, timeout=30)
    finally:
        writer.join()
        running.stop()
    assert ch_client.query("SELECT count(), uniqExact(n) FROM ev").result_rows[0] == (rows, rows)
    assert not list((tmp_path / "state" / "spool").glob("*.batch"))


def test_the_most_crowded_shard_counts() -> None:
    from concurrent.futures import Future

    futures: list[Future[PartsState]] = [Future() for _ in range(3)]
    worst = worst_of(futures)
    futures[0].set_result(PartsState(parts=500, delay_at=1000, throw_at=3000))
    futures[1].set_exception(ServerError("down", code=210, name="NETWORK_ERROR"))
    assert not worst.done()
    futures[2].set_result(PartsState(parts=30, delay_at=50, throw_at=100))
    assert worst.result() == PartsState(parts=30, delay_at=50, throw_at=100)
    failed: list[Future[PartsState]] = [Future()]
    all_down = worst_of(failed)
    failed[0].set_exception(ServerError("down", code=210, name="NETWORK_ERROR"))
    assert isinstance(all_down.exception(), ServerError)
