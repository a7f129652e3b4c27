"""A batch whose split is tried again dead-letters its unreadable records once.

The splitter wrote the records whose sharding key cannot be read to the dead letters,
then spooled the batch's parts; when the parts could not be spooled yet (the spool's
disk failing: "its parts cannot be spooled yet"), the split was tried again after a
backoff, and every attempt wrote the same records to the dead letters again: one
record dead-lettered once per retry while the disk failed, each copy replayed by an
operator inserting its row again. Now a batch's records go to the dead letters once per
split, however often its parts must be spooled again (a daemon that dies before they are
writes them again at its next start, as docs/sharding.md says).
"""

from __future__ import annotations

from pathlib import Path

from chworkers.clickhouse.cluster import Cluster
from chworkers.daemon.deadletter import DeadLetters
from chworkers.daemon.keycolumns import Column
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.daemon.splitter import Splitter
from chworkers.daemon.spool import Spool


def test_a_split_spooled_at_the_second_attempt_dead_letters_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", SpoolSettings(fsync=False))
    splitter = Splitter(
        [PipelineSettings(name="p", table="ev", sharding_key="n")],
        Cluster.parse([["http://h0:8123"], ["http://h1:8123"]]),
        spool,
        lambda part: None,
        lambda table: [Column("n", "UInt64", "")],
        dead_letters=DeadLetters(tmp_path / "dead-letter"),
    )
    whole = spool.put(
        "ev", b'{"n":1}\n{"n":"x"}\n{"n":2}\n', format="JSONEachRow", rows=3, pipeline="p"
    )
    # The first part's file cannot be written (a directory stands in its place): the
    # parts cannot be spooled at the first attempt, as when the spool's disk fails.
    (spool.directory / f"{whole.seq + 1:020d}.batch").mkdir()
    assert not splitter._split_one(whole)  # waits, whole, to be split again
    assert splitter._split_one(whole)  # the next parts' files can be written
    letters = [
        line
        for path in (tmp_path / "dead-letter").rglob("*")
        if path.is_file()
        for line in path.read_text().splitlines()
    ]
    assert len(letters) == 1, letters  # was 2: one more per attempt
    assert '"reason": "sharding_key"' in letters[0]
    files = sorted(p.name for p in spool.directory.glob("*.batch") if p.is_file())
    assert len(files) == 2 and f"{whole.seq:020d}.batch" not in files  # the parts, not it
