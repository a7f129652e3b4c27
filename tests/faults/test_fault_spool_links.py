"""Batches spooled by reference are safe at every edge of their file's life.

Spooled by reference, a batch was a byte range of its file by name: a job that removed
the file once the daemon had read it (or logrotate renaming it) while ClickHouse was
down lost every batch still spooled, which is why reference stopped being the default
(test_fault_spool_default_copy). Now the spool keeps a hard link to each file it
references (removed once no batch needs it), falls back to copies where it cannot link,
counts what a link holds of a removed file against its cap, and copies a referenced
batch into itself as soon as it has to wait (an attempt failed), so that a file
truncated in place (copytruncate) during an outage takes nothing either.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import Running, count, lines
from faultproxy import FaultProxy
from prometheus_client import CollectorRegistry
from readbyref import file_behind_an_outage, read_by_reference
from waiting import wait_for

from chworkers.daemon import filesource, spoolrefs
from chworkers.daemon.extents import Extent
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch, read_batch
from chworkers.daemon.spoollinks import SpoolLinks
from chworkers.embedded import EmbeddedClickHouse
from chworkers.ops.metrics import Metrics


@pytest.fixture(autouse=True)
def _small_files_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """These files are small: by reference all the same (a real one would be copied)."""
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)


def _read(
    spool_dir: Path, files: list[Path], *, spool: Spool | None = None
) -> tuple[Spool, list[SpooledBatch]]:
    spool = spool or Spool(spool_dir, SpoolSettings(fsync=False))
    return spool, read_by_reference(spool, files, spool_dir.parent / "positions", read_size=4096)


def _links(spool: Spool) -> list[str]:
    spool.links.refresh(force=True)  # the releases due once the last records are spooled
    folder = spool.directory / "links"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_link_per_file_lives_until_its_batches_are_confirmed(tmp_path: Path) -> None:
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    files[0].write_bytes(lines(0, 2500))
    files[1].write_bytes(lines(2500, 3000))
    spool, batches = _read(tmp_path / "spool", files)
    assert all(b.extents for b in batches)
    assert all(
        e.path.startswith(str(spool.directory / "links")) for b in batches for e in b.extents
    )
    assert {e.source for b in batches for e in b.extents} == {str(f) for f in files}
    assert len(_links(spool)) == 2
    for f in files:
        f.unlink()  # read: a cleanup job takes them away
    data = b"".join(spool.load(b).payload for b in batches)
    assert data == lines(0, 3000)
    assert [len(b.extents) for b in batches] == [1, 1, 2]  # the last: a's end, all of b
    for batch in batches[:-1]:
        spool.remove(batch)
    assert len(_links(spool)) == 2  # the last batch still needs both
    spool.remove(batches[-1])
    assert _links(spool) == []


def test_a_restart_keeps_the_links_of_pending_batches_and_removes_leftovers(
    tmp_path: Path,
) -> None:
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 3000))
    spool, batches = _read(tmp_path / "spool", [source])
    (spool.directory / "links" / "12-leftover").write_bytes(b"x")  # a crash's leftover
    spool.remove(batches[0])
    # Stopped; logrotate renames the file away and creates a new one meanwhile.
    source.rename(tmp_path / "a.json.1")
    source.write_bytes(b'{"n":1,"s":"new"}\n')
    again = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    pending = again.recover()
    assert [b.seq for b in pending] == [b.seq for b in batches[1:]]
    assert len(_links(again)) == 1
    assert b"".join(again.load(b).payload for b in pending) == lines(1000, 3000)
    for batch in pending:
        again.remove(batch)
    assert _links(again) == []


def test_another_file_system_falls_back_to_copies_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system at /dev/shm")
    folder = other / f"chw-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    try:
        files = [folder / "a.json", folder / "b.json"]
        files[0].write_bytes(lines(0, 1500))
        files[1].write_bytes(lines(1500, 3000))
        with caplog.at_level(logging.WARNING, logger="chworkers.daemon.spoollinks"):
            spool, batches = _read(tmp_path / "spool", files)
        assert not any(b.extents for b in batches)
        assert b"".join(b.payload for b in batches) == lines(0, 3000)
        warned = [r.getMessage() for r in caplog.records if "cannot link" in r.getMessage()]
        assert len(warned) == 1 and "another file system" in warned[0], warned
        assert _links(spool) == []
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def test_what_a_link_holds_of_a_removed_file_counts_against_the_cap(tmp_path: Path) -> None:
    source = tmp_path / "a.json"
    data = lines(0, 5000)
    source.write_bytes(data)
    spool, batches = _read(tmp_path / "spool", [source])
    for batch in batches[:-1]:
        spool.remove(batch)
    referenced = batches[-1].size
    spool.links.refresh(force=True)
    assert spool.links.pinned == 0  # the file has its own name: the link holds nothing
    source.unlink()
    spool.links.refresh(force=True)
    assert spool.links.pinned == len(data) - referenced
    assert spool.stats()["bytes"] >= len(data)
    spool.remove(batches[-1])
    assert spool.links.pinned == 0 and spool.stats()["bytes"] == 0


def test_a_failed_attempt_copies_its_batch_and_trouble_copies_the_rest(tmp_path: Path) -> None:
    """copytruncate during an outage: the batches were copied when the first attempt
    failed, so the truncation takes nothing; new batches are copies until an insert is
    confirmed."""
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 5000))
    registry = CollectorRegistry()
    spool_dir = tmp_path / "spool"
    metered = Spool(spool_dir, SpoolSettings(fsync=False), metrics=Metrics(registry))
    spool, batches = _read(spool_dir, [source], spool=metered)
    assert spool.by_reference() == [b.seq for b in batches]
    failed = spool.load(batches[0])
    spool.attempt_failed(failed)  # e.g. connection refused: ClickHouse's trouble
    wait_for(lambda: spool.by_reference() == [], timeout=30)
    assert registry.get_sample_value("chworkers_spool_reference_copies_total") == 5
    assert not spool.takes_references()
    os.truncate(source, 0)  # logrotate copytruncate
    for batch in batches:
        on_disk = read_batch(spool.directory / f"{batch.seq:020d}.batch")
        assert not on_disk.extents and on_disk.token == batch.token
    assert b"".join(spool.load(b).payload for b in batches) == lines(0, 5000)
    assert _links(spool) == []
    spool.remove(batches[0])  # an insert confirmed: ClickHouse is back
    assert spool.takes_references()


def test_a_batch_seen_copied_is_counted_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chworkers_spool_reference_copies_total moves with the batches by reference: the
    copy was counted after its links were removed, so the test above, waiting for no
    batch by reference, read 4 copies of 5 (3 runs in 100 at load 10). Removing links
    made slow here, as a loaded disk does, shows that window every time."""
    detach = SpoolLinks.detach

    def slow_detach(self: SpoolLinks, seq: int, refs: Any) -> None:
        time.sleep(0.2)
        detach(self, seq, refs)

    monkeypatch.setattr(SpoolLinks, "detach", slow_detach)
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 3000))
    registry = CollectorRegistry()
    spool_dir = tmp_path / "spool"
    metered = Spool(spool_dir, SpoolSettings(fsync=False), metrics=Metrics(registry))
    spool, batches = _read(spool_dir, [source], spool=metered)
    assert len(spool.by_reference()) == len(batches) == 3
    spool.in_trouble()  # the copier copies them, in its thread
    # (batches by reference, then the copies counted): one seen copied is counted.
    seen: list[tuple[int, float]] = []

    def all_copied() -> bool:
        left = len(spool.by_reference())
        copies = registry.get_sample_value("chworkers_spool_reference_copies_total") or 0
        seen.append((left, copies))
        return left == 0

    wait_for(all_copied, timeout=30, what="every batch copied")
    assert all(copies >= 3 - left for left, copies in seen), seen
    assert seen[-1] == (0, 3)


def test_a_batch_that_cannot_be_copied_holds_back_no_other(tmp_path: Path) -> None:
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    files[0].write_bytes(lines(0, 1000))
    files[1].write_bytes(lines(1000, 3000))
    spool, batches = _read(tmp_path / "spool", files)
    assert [len(b.extents) for b in batches] == [1, 1, 1]
    os.truncate(files[0], 10)  # the first batch's records are gone already
    spool.in_trouble()
    wait_for(lambda: spool.by_reference() == [batches[0].seq], timeout=30)
    assert b"".join(spool.load(b).payload for b in batches[1:]) == lines(1000, 3000)


def test_a_permanent_error_copies_only_its_own_batch(tmp_path: Path) -> None:
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 3000))
    spool, batches = _read(tmp_path / "spool", [source])
    spool.attempt_failed(spool.load(batches[1]), trouble=False)  # e.g. its table is missing
    assert spool.by_reference() == [batches[0].seq, batches[2].seq]
    assert spool.takes_references()
    batch_file = read_batch(spool.directory / f"{batches[1].seq:020d}.batch")
    assert batch_file.payload == lines(1000, 2000)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("change", ["removed", "copytruncate"])
def test_a_file_removed_or_truncated_during_an_outage_is_inserted_whole(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    fault_proxy: FaultProxy,
    change: str,
) -> None:
    # ClickHouse unreachable: batches wait in the spool.
    data, cfg = file_behind_an_outage(tmp_path, database, ch_client, fault_proxy)
    cfg["pipelines"][0]["spool_data"] = "reference"
    running = Running(cfg)
    try:
        spool = running.daemon.spool
        wait_for(lambda: spool.stats()["batches"] == 5, timeout=60)
        # The first failed attempt had them all copied into the spool.
        wait_for(lambda: spool.by_reference() == [], timeout=60)
        if change == "removed":
            data.unlink()
        else:
            os.truncate(data, 0)
        fault_proxy.set("pass")
        wait_for(lambda: count(endpoint, database) == (5000, 5000), timeout=120)
        wait_for(lambda: _links(spool) == [], timeout=30)
    finally:
        running.stop()


@pytest.mark.timeout(180)
def test_a_stop_copies_the_batches_left_by_reference(
    tmp_path: Path,
    endpoint: EmbeddedClickHouse,
    database: str,
    ch_client: Client,
    fault_proxy: FaultProxy,
) -> None:
    """Stopped with batches by reference left (ClickHouse slow to answer), the daemon
    copies them before it exits: the file may then be truncated before the next start."""
    # Nothing is answered, nothing fails before the stop.
    data, cfg = file_behind_an_outage(
        tmp_path, database, ch_client, fault_proxy, mode="delay", delay=60
    )
    cfg["pipelines"][0]["spool_data"] = "reference"
    cfg["supervisor"]["graceful_timeout"] = 1.0
    running = Running(cfg)
    try:
        spool = running.daemon.spool
        wait_for(lambda: len(spool.by_reference()) == 5, timeout=60)
    finally:
        running.stop()
    batch_files = sorted((tmp_path / "state" / "spool").glob("*.batch"))
    assert len(batch_files) == 5
    assert all(not read_batch(p).extents for p in batch_files)
    assert not list((tmp_path / "state" / "spool" / "links").iterdir())
    os.truncate(data, 0)  # while the daemon is down
    fault_proxy.set("pass")
    running = Running(cfg)
    try:
        wait_for(lambda: count(endpoint, database) == (5000, 5000), timeout=120)
    finally:
        running.stop()


def test_a_small_file_is_copied_a_large_one_referenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per file, a reference costs an fsync of the file and a hard link: for a file of a
    few KiB that is more than copying it (ten times slower over 200 such files)."""
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 64 * 1024)
    small, large = tmp_path / "a-small.json", tmp_path / "b-large.json"
    small.write_bytes(lines(0, 100))
    large.write_bytes(lines(100, 4100))
    assert small.stat().st_size < 64 * 1024 <= large.stat().st_size
    spool, batches = _read(tmp_path / "spool", [tmp_path / "*.json"])
    # The first batch holds the small file's records too: a copy; the rest are ranges.
    assert [len(b.extents) for b in batches] == [0, 1, 1, 1, 1]
    assert {e.source for b in batches for e in b.extents} == {str(large)}
    assert b"".join(spool.load(b).payload for b in batches) == lines(0, 4100)


def test_a_batch_copied_while_it_is_read_from_its_link_is_read_from_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copier copies a batch (and drops its link) between the dispatcher taking its
    references and opening the link: the link is gone, the records are not. The batch
    was taken for lost and its copy moved to quarantine."""
    source = tmp_path / "a.json"
    source.write_bytes(lines(0, 1000))
    spool, batches = _read(tmp_path / "spool", [source])
    [batch] = batches
    real_read = spoolrefs.extents.read

    def copied_first(refs: tuple[Extent, ...], *, seq: int) -> bytes:
        monkeypatch.setattr(spoolrefs.extents, "read", real_read)
        assert spool.materialize(batch)  # the copier, at the worst moment
        return real_read(refs, seq=seq)  # the link is gone now

    monkeypatch.setattr(spoolrefs.extents, "read", copied_first)
    assert spool.load(batch).payload == lines(0, 1000)
    assert spool.stats()["batches"] == 1
    assert not (spool.directory / "quarantine").exists()
