"""A file read once is spooled by reference, and stays exactly once through kill -9.

Every batch of a file source was copied into a spool file (joined, checksummed, written,
fsync'd) and read back from it (checksummed again) before it was inserted: for a file
read once that is a second durable copy of bytes already on disk, and on the 2-core
benchmark machine about 20 ms of the daemon's CPU per 100,000-line batch, taken from
the ClickHouse it feeds (issue 11, steady state). Such a batch is now spooled as where
its records are in the file (``spool_data = "reference"``, the default): the spool
file holds a byte range of the spool's hard link to the file, the file is fsync'd
first, and the records are read from it when the batch is inserted or replayed. A file
removed or renamed meanwhile is read through the link; one truncated or rewritten in
place fails its batch with a message naming it (test_fault_spool_links has the rest).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import waiting
from chclients import make_client
from daemonthread import lines
from readbyref import read_by_reference

from chworkers.daemon import filesource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch, read_batch
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import SpoolCorruptError


@pytest.fixture(autouse=True)
def _small_files_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """These files are small: by reference all the same (a real one would be copied)."""
    monkeypatch.setattr(filesource, "REFERENCE_MIN_BYTES", 0)


def _read(
    tmp_path: Path, data: bytes, *, follow: bool = False, rename: bool = False
) -> tuple[Spool, list[SpooledBatch]]:
    (tmp_path / "a.json").write_bytes(data)
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    batches = read_by_reference(
        spool,
        [tmp_path / "a.json"],
        tmp_path / "positions",
        read_size=4096,
        follow_for=1.0 if follow else None,  # tails until stopped: once all of it is in
        transform=(lambda records: records) if rename else None,
    )
    return spool, batches


def test_a_file_read_once_is_spooled_by_reference(tmp_path: Path) -> None:
    data = b"".join(b'{"n":%d,"s":"%s"}\n' % (i, b"x" * (i % 5)) for i in range(5500))
    spool, batches = _read(tmp_path, data, follow=False)
    assert [b.rows for b in batches] == [1000] * 5 + [500]
    assert all(b.extents and not b.payload for b in batches)
    # The spool files hold the references, not the records.
    assert all(b.path is not None and b.path.stat().st_size < 1000 for b in batches)
    on_disk = [read_batch(b.path) for b in batches if b.path is not None]
    assert [b.extents for b in on_disk] == [b.extents for b in batches]
    loaded = [spool.load(b) for b in on_disk]
    assert b"".join(b.payload for b in loaded) == data
    assert [b.rows for b in loaded] == [1000] * 5 + [500]


def test_followed_files_and_renamed_fields_are_copied(tmp_path: Path) -> None:
    data = lines(0, 1500)
    for follow, rename in ((True, False), (False, True)):
        where = tmp_path / f"{follow}-{rename}"
        where.mkdir()
        _, batches = _read(where, data, follow=follow, rename=rename)
        assert b"".join(b.payload for b in batches) == data
        assert not any(b.extents for b in batches)


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_removed_or_replaced_file_is_still_read_through_its_link(
    tmp_path: Path, change: str
) -> None:
    """The spool's hard link keeps the file's inode: a cleanup job (rm) or logrotate's
    ``create`` (the file renamed, a new one under its name) takes nothing away."""
    data = lines(0, 3000)
    spool, batches = _read(tmp_path, data)
    path = tmp_path / "a.json"
    if change == "removed":
        path.unlink()
    else:
        path.rename(tmp_path / "a.json.1")
        path.write_bytes(b'{"n":9' + data[6:])
    assert b"".join(spool.load(b).payload for b in batches) == data


@pytest.mark.parametrize("change", ["truncated", "rewritten in place"])
def test_a_file_changed_in_place_fails_its_batches_clearly(tmp_path: Path, change: str) -> None:
    """A link does not protect bytes truncated or overwritten in the same inode: such a
    batch is refused with a message naming the file and its bytes, and leaves the spool
    for its quarantine (it would fail again at every start)."""
    data = lines(0, 3000)
    spool, batches = _read(tmp_path, data)
    path = tmp_path / "a.json"
    if change == "truncated":
        os.truncate(path, 100)
    else:  # same size, same first bytes, other records at the end (samples differ)
        with open(path, "r+b") as fh:
            fh.seek(len(data) - 20)
            fh.write(b"0" * 19)
    with pytest.raises(SpoolCorruptError, match=r"a\.json") as caught:
        spool.load(batches[-1])
    assert ("replaced, truncated" if change == "truncated" else "rewritten in place") in str(
        caught.value
    )
    assert spool.stats()["batches"] == len(batches) - 1
    assert list((tmp_path / "spool" / "quarantine").iterdir())


def _config(tmp_path: Path, n: int, url: str) -> list[str]:
    (tmp_path / "in.json").write_bytes(lines(0, n))
    conf = tmp_path / "chworkers.toml"
    conf.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[clickhouse]
url = "{url}"
[metrics]
port = 0
[[pipelines]]
name = "p"
source = "file"
paths = ["{tmp_path / "in.json"}*"]
table = "ev"
create = "n UInt64, s String"
engine = "MergeTree ORDER BY n"
max_rows = 2000
spool_data = "reference"
"""
    )
    return [sys.executable, "-m", "chworkers", "run", "-c", str(conf)]


@pytest.mark.timeout(240)
def test_kill_9_mid_ingest_with_references_then_restart_exact_count(tmp_path: Path) -> None:
    n = 200_000
    with EmbeddedClickHouse(tmp_path / "ch") as ch:
        cmd = _config(tmp_path, n, ch.url)
        client = make_client(ch)
        spool = tmp_path / "state" / "spool"

        def inserted() -> int:
            try:
                return int(client.command("SELECT count() FROM ev"))
            except Exception:
                return 0

        seen: list[SpooledBatch] = []

        def mid_ingest() -> bool:
            for path in spool.glob("*.batch"):
                with contextlib.suppress(SpoolCorruptError):  # inserted and removed meanwhile
                    seen.append(read_batch(path))
            return inserted() >= 10_000

        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            waiting.wait_for(
                lambda: mid_ingest() or proc.poll() is not None, timeout=120, interval=0.02
            )
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert inserted() < n
        assert seen and all(b.extents and not b.payload for b in seen)
        assert all(e.path.startswith(str(spool / "links")) for b in seen for e in b.extents)
        # logrotate while the daemon is down: renamed (a name the paths match), a new
        # empty file created. The spooled batches name the spool's link to the old one.
        os.rename(tmp_path / "in.json", tmp_path / "in.json.1")
        (tmp_path / "in.json").write_bytes(b"")
        again = subprocess.run(cmd, capture_output=True, timeout=180)
        assert again.returncode == 0, again.stderr.decode()[-3000:]
        assert client.query("SELECT count(), uniqExact(n), sum(n) FROM ev").result_rows[0] == (
            n,
            n,
            sum(range(n)),
        )
        assert not list(spool.glob("*.batch"))
        assert not list((spool / "links").iterdir())  # nothing needs them any more
        client.close()


def test_references_count_against_the_spool_cap(tmp_path: Path) -> None:
    """The cap bounds the backlog of a file read by reference as it does for copies:
    otherwise a huge file would be spooled whole in seconds, as a million small files
    and their descriptions in memory."""
    data = lines(0, 5000)
    spool, batches = _read(tmp_path, data)
    assert spool.stats()["bytes"] >= len(data)
    for batch in batches:
        spool.remove(batch)
    assert spool.stats()["bytes"] == 0
