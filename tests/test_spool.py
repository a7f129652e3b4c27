from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import PartSpec, Spool, SpooledBatch, read_batch
from chworkers.errors import SpoolFullError
from chworkers.ops.metrics import Metrics


def put(spool: Spool, payload: bytes) -> SpooledBatch:
    return spool.put("events", payload, format="JSONEachRow", rows=payload.count(b"\n"))


def test_put_recover_remove_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(fsync=True))
    a = spool.put("events", b'{"x":1}\n', format="JSONEachRow", rows=1, settings={"s": 1})
    b = spool.put("events", b'{"x":2}\n', format="JSONEachRow", rows=1)
    assert a.token != b.token
    assert a.seq < b.seq

    again = Spool(tmp_path)
    replay = again.recover()
    assert [(x.seq, x.token, x.payload, x.settings) for x in replay] == [
        (a.seq, a.token, a.payload, {"s": 1}),
        (b.seq, b.token, b.payload, {}),
    ]
    assert again.spool_id == spool.spool_id  # tokens stay fixed across restarts
    again.remove(replay[0])
    assert [x.seq for x in Spool(tmp_path).recover()] == [b.seq]
    # New batches continue the sequence instead of reusing numbers.
    c = again.put("events", b"{}\n", format="JSONEachRow", rows=1)
    assert c.seq > b.seq


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_file_is_quarantined_and_rest_replayed(tmp_path: Path, damage: str) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    spool = Spool(tmp_path, metrics=metrics)
    good = spool.put("t", b"1\n", format="CSV", rows=1)
    bad = spool.put("t", b"2\n" * 100, format="CSV", rows=100)
    assert bad.path is not None
    data = bad.path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip": data[:60] + bytes([data[60] ^ 0xFF]) + data[61:],
        "garbage": b"not a spool file at all",
        "empty": b"",
    }[damage]
    bad.path.write_bytes(damaged)

    again = Spool(tmp_path, metrics=metrics)
    assert [x.seq for x in again.recover()] == [good.seq]
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].read_bytes() == damaged  # kept for a human to look at
    assert registry.get_sample_value("chworkers_spool_quarantined_total") == 1


def test_reject_policy_raises_when_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(max_bytes=4096, policy="reject"))
    put(spool, b"x" * 1000 + b"\n")
    put(spool, b"x" * 1000 + b"\n")
    with pytest.raises(SpoolFullError, match="full"):
        put(spool, b"x" * 2000 + b"\n")


def test_drop_oldest_policy_counts_drops(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(
        tmp_path, SpoolSettings(max_bytes=4096, policy="drop_oldest"), metrics=Metrics(registry)
    )
    first = put(spool, b"a" * 1500 + b"\n")
    put(spool, b"b" * 1500 + b"\n")
    put(spool, b"c" * 1500 + b"\n")
    remaining = [x.seq for x in Spool(tmp_path).recover()]
    assert first.seq not in remaining
    assert registry.get_sample_value("chworkers_spool_dropped_batches_total") == 1


def test_block_policy_waits_for_space(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(max_bytes=4096, policy="block"))
    first = spool.put("t", b"x" * 3000, format="CSV", rows=1)
    removed = threading.Event()

    def remove() -> None:
        removed.set()
        spool.remove(first)

    threading.Timer(0.2, remove).start()
    spool.put("t", b"y" * 3000, format="CSV", rows=1, timeout=5)
    # It waited for the removal (not for a clock: a loaded machine delays either thread).
    assert removed.is_set()
    with pytest.raises(SpoolFullError):
        spool.put("t", b"z" * 3000, format="CSV", rows=1, timeout=0.1)


def test_stats_and_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    spool = Spool(tmp_path, metrics=Metrics(registry))
    batch = put(spool, b"{}\n" * 10)
    assert spool.stats()["batches"] == 1
    assert registry.get_sample_value("chworkers_spool_batches") == 1
    assert registry.get_sample_value("chworkers_spool_bytes") == spool.stats()["bytes"] > 30
    spool.remove(batch)
    assert registry.get_sample_value("chworkers_spool_batches") == 0
    assert "0 batches" in repr(spool)


def test_kill_9_while_writing_leaves_only_whole_batches(tmp_path: Path) -> None:
    """A writer killed at any moment leaves whole batches or temp files, never half ones."""
    script = textwrap.dedent(
        f"""
        import sys
        from chworkers.daemon.spool import Spool
        spool = Spool({str(tmp_path)!r})
        i = 0
        while True:
            spool.put("t", (b"%d\\n" % i) * 20000, format="CSV", rows=20000)
            i += 1
            if i == 3:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    batches = Spool(tmp_path).recover()
    assert len(batches) >= 3
    for batch in batches:
        assert batch.rows == 20000
        assert batch.path is not None
        assert read_batch(batch.path).payload == batch.payload
    assert not (tmp_path / "quarantine").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_batch_larger_than_cap_is_admitted_into_an_empty_spool(tmp_path: Path) -> None:
    # Otherwise it could never be written at all; the cap bounds the backlog, not a batch.
    spool = Spool(tmp_path, SpoolSettings(max_bytes=1024, policy="reject"))
    put(spool, b"x" * 2000 + b"\n")
    with pytest.raises(SpoolFullError):
        put(spool, b"y\n")


def test_numbers_and_tokens_never_repeat_even_after_the_spool_emptied(tmp_path: Path) -> None:
    # A repeated token would make ClickHouse drop new data as a duplicate of old data.
    spool = Spool(tmp_path)
    first = [put(spool, b"%d\n" % i) for i in range(3)]
    for batch in first:
        spool.remove(batch)
    again = Spool(tmp_path)
    assert again.recover() == []
    later = put(again, b"x\n")
    assert later.seq > max(b.seq for b in first)
    assert later.token not in {b.token for b in first}


def test_sequence_reservations_survive_many_restarts(tmp_path: Path) -> None:
    import chworkers.daemon.spoolreserve as spool_module

    seen: set[int] = set()
    for _ in range(3):
        spool = Spool(tmp_path, SpoolSettings(fsync=False))
        for _ in range(spool_module.SEQ_BLOCK + 5):  # cross a reservation block
            batch = put(spool, b"1\n")
            assert batch.seq not in seen
            seen.add(batch.seq)
            spool.remove(batch)


def test_a_batch_replaced_by_its_parts_commits_when_the_whole_is_gone(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(fsync=True))
    whole = spool.put(
        "events", b"a\nb\nc\n", format="TSV", rows=3, pipeline="p", meta={"files": {"f": 1}}
    )
    parts = spool.replace(
        whole,
        [
            PartSpec(b"a\nc\n", 2, f"{whole.token}@shard0", {"shard": 0}),
            PartSpec(b"b\n", 1, f"{whole.token}@shard2", {"shard": 2}),
        ],
    )
    assert [(p.payload, p.rows, p.meta["shard"], p.meta["group"]) for p in parts] == [
        (b"a\nc\n", 2, 0, whole.seq),
        (b"b\n", 1, 2, whole.seq),
    ]
    assert all(p.meta["files"] == {"f": 1} and p.pipeline == "p" for p in parts)
    replay = Spool(tmp_path).recover()
    assert [(b.seq, b.token) for b in replay] == [(p.seq, p.token) for p in parts]
    assert spool.stats()["batches"] == 2


def test_parts_of_a_split_cut_short_are_removed_and_the_whole_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, SpoolSettings(fsync=True))
    whole = spool.put("events", b"a\nb\n", format="TSV", rows=2)
    other = spool.put("events", b"z\n", format="TSV", rows=1)
    # A crash after the parts were written, before the whole's removal (the commit):
    # as if replace() stopped there.
    part = spool.put("events", b"a\n", format="TSV", rows=1, meta={"shard": 1, "group": whole.seq})
    replay = Spool(tmp_path).recover()
    assert [b.seq for b in replay] == [whole.seq, other.seq]
    assert not (part.path and part.path.exists())
    assert read_batch(whole.path).payload == b"a\nb\n"  # type: ignore[arg-type]
