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

from chworkers import Supervisor, TableLimit
from chworkers.errors import ConfigError
from chworkers.workers.context import TaskInfo, WorkerContext
from chworkers.workers.middleware import Middleware

pytestmark = pytest.mark.timeout(90)


class Windows(Middleware):
    """Appends ``table start end`` (monotonic, shared by all processes) per insert."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_task(
        self,
        worker: WorkerContext,
        task: TaskInfo,
        result: object,
        error: BaseException | None,
        duration: float,
    ) -> None:
        end = time.monotonic()
        with open(self.path, "a") as fh:
            fh.write(f"{task.table} {end - duration!r} {end!r}\n")


def windows(path: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines():
        table, start, end = line.split()
        out.setdefault(table, []).append((float(start), float(end)))
    return {table: sorted(w) for table, w in out.items()}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture
def slow(fault_proxy: FaultProxy, ch_client: Any, database: str) -> Iterator[str]:
    """A URL whose every answer comes 0.15 s late, with tables hot and cold."""
    for table in ("hot", "cold"):
        ch_client.command(f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree ORDER BY n")
    fault_proxy.set("delay", delay=0.15)
    yield f"http://127.0.0.1:{fault_proxy.port}/{database}"


def test_a_hot_table_held_to_one_insert_does_not_delay_the_others(
    slow: str, tmp_path: Path, ch_client: Any
) -> None:
    record = tmp_path / "windows"
    with Supervisor(
        slow,
        workers=3,
        max_connections=3,
        start_method="fork",
        middleware=[Windows(str(record))],
        table_limits={"hot": {"max_concurrent_inserts": 1}},
    ) as sup:
        hot = [sup.insert("hot", [[i]], ["n"]) for i in range(8)]
        cold = [sup.insert("cold", [[i]], ["n"]) for i in range(4)]
        assert [f.result(60) for f in hot + cold] == [1] * 12
        waiting = sup.registry.get_sample_value(
            "chworkers_table_limit_wait_seconds_count", {"table": "hot"}
        )
    spans = windows(record)
    # The limit held: one insert into hot at a time, in every worker together.
    assert most_at_once(spans["hot"]) == 1
    # The cold inserts, queued behind all of hot's, went past them to the free workers:
    # all done before hot's third insert began.
    assert max(end for _, end in spans["cold"]) < spans["hot"][2][0]
    assert most_at_once(spans["cold"]) >= 2
    assert waiting == 8
    assert ch_client.query("SELECT count() FROM hot").result_rows[0][0] == 8
    assert ch_client.query("SELECT count() FROM cold").result_rows[0][0] == 4


def test_inserts_per_second_are_spaced_across_workers(slow: str, tmp_path: Path) -> None:
    record = tmp_path / "windows"
    with Supervisor(
        slow,
        workers=3,
        max_connections=3,
        start_method="fork",
        middleware=[Windows(str(record))],
        table_limits={"hot": TableLimit(max_inserts_per_second=4)},
    ) as sup:
        futures = [sup.insert("hot", [[i]], ["n"]) for i in range(6)]
        assert [f.result(60) for f in futures] == [1] * 6
    starts = [start for start, _ in windows(record)["hot"]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.25 s apart when handed to the workers; a worker picks its task up within
    # milliseconds, so allow a little for that, never the 0 s an unlimited table shows.
    assert min(gaps) > 0.2, gaps
    assert starts[-1] - starts[0] >= 5 * 0.25 - 0.05


def test_a_rate_limited_table_is_not_starved_by_busy_workers(slow: str, tmp_path: Path) -> None:
    # Cold inserts, queued right after hot's, keep every worker busy (each holds the
    # next one or two) by the time hot may start its second; hot's inserts then go to
    # busy workers, and each waits for the previous one's result
    # before its 1/rate: spaced all the same, and not held until cold is done.
    record = tmp_path / "windows"
    with Supervisor(
        slow,
        workers=2,
        max_connections=2,
        start_method="fork",
        middleware=[Windows(str(record))],
        table_limits={"hot": TableLimit(max_inserts_per_second=5)},
    ) as sup:
        for table in ("hot", "cold"):  # columns looked up: producers encode at once
            sup.insert(table, [[100]], ["n"]).result(60)
        record.unlink()
        hot = [sup.insert("hot", [[i]], ["n"]) for i in range(3)]
        cold = [sup.insert("cold", [[i]], ["n"]) for i in range(24)]
        assert [f.result(60) for f in cold + hot] == [1] * 27
    spans = windows(record)
    starts = [start for start, _ in spans["hot"]]
    assert min(b - a for a, b in itertools.pairwise(starts)) > 0.18  # a pipe read of slack
    assert spans["hot"][-1][1] < spans["cold"][-1][0]  # done while cold still ran


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
