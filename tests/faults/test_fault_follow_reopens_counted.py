"""How often followed files are reopened can be observed: chworkers_source_reopens_total.

The dashboard's *Followed files* panel advised raising ``max_open_files`` when closed
files keep growing, "each reopen costing an open and a read of its first bytes", but no
metric counted a reopen: whether files took turns for descriptors many times a second
or woke up once an hour after ``close_idle_after`` looked the same.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from test_fault_follow_open_files import Pipeline, line
from waiting import wait_for

from chworkers.ops.metrics import Metrics


def test_each_reopen_of_a_closed_file_is_counted(tmp_path: Path) -> None:
    data = tmp_path / "logs"
    data.mkdir()
    files = [data / f"f{i}.log" for i in range(6)]
    for i, f in enumerate(files):
        f.write_bytes(line(i))
    pipeline = Pipeline(tmp_path)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    source = pipeline.follow([f"{data}/*.log"], max_open_files=2, metrics=metrics)
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,))
    thread.start()

    def reopens() -> float:
        return registry.get_sample_value("chworkers_source_reopens_total", {"source": "logs"})

    try:
        wait_for(lambda: pipeline.numbers() == list(range(6)), timeout=20)
        assert reopens() == 0  # opened for the first time: not a reopen
        wait_for(lambda: len(source._parked) == 4, timeout=10)
        parked = sorted(source._parked)
        time.sleep(0.1)
        for n, path in enumerate(parked, start=6):  # each closed file grows: reopened
            with open(path, "ab") as fh:
                fh.write(line(n))
        wait_for(lambda: pipeline.numbers() == list(range(10)), timeout=20)
        assert reopens() == 4
    finally:
        stop.set()
        thread.join(10)
        pipeline.batcher.close(timeout=10)
