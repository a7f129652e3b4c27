"""A table limited by rate was starved by busy workers: its inserts were only handed to
a worker with nothing else to do, so other tables keeping every worker busy held them
back until they were done. Now they go to a busy worker too, and the table's next
insert waits for that one's result (then 1/rate), so the spacing still holds."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from insertwindows import recording, slow_tables, warm, windows

from chworkers import TableLimit

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def slow(fault_proxy: FaultProxy, ch_client: Any, database: str) -> Iterator[str]:
    yield slow_tables(fault_proxy, ch_client, database)


def test_a_rate_limited_table_is_not_starved_by_busy_workers(slow: str, tmp_path: Path) -> None:
    # Cold inserts, queued right after hot's, keep every worker busy (each holds the
    # next one or two) by the time hot may start its second; hot's inserts then go to
    # busy workers, and each waits for the previous one's result
    # before its 1/rate: spaced all the same, and not held until cold is done.
    record = tmp_path / "windows"
    with recording(slow, record, 2, {"hot": TableLimit(max_inserts_per_second=5)}) as sup:
        warm(sup, record)
        hot = [sup.insert("hot", [[i]], ["n"]) for i in range(3)]
        cold = [sup.insert("cold", [[i]], ["n"]) for i in range(24)]
        assert [f.result(60) for f in cold + hot] == [1] * 27
    spans = windows(record)
    starts = [start for start, _ in spans["hot"]]
    assert min(b - a for a, b in itertools.pairwise(starts)) > 0.18  # a pipe read of slack
    assert spans["hot"][-1][1] < spans["cold"][-1][0]  # done while cold still ran
