"""A dead-letter write that fails halfway (the disk fills up) leaves no torn line.

The daemon writes a batch's rejected rows before the batch leaves the spool; when that
write fails, the batch stays spooled and its dead letters are written again on the next
attempt. A failed write that left its first bytes in the file would make that retry
append after a torn half line: one record mangled, the records before the cut twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from smalldisk import disk_full, small_filesystem

from chworkers.clickhouse.inserts import Rejected
from chworkers.daemon.deadletter import DeadLetters
from chworkers.errors import ServerError

ROOM = 64 * 1024  # what the disk has left when the big write starts


def rejected(count: int, prefix: str) -> list[Rejected]:
    error = ServerError("Cannot parse input", code=27, name="CANNOT_PARSE_INPUT_ASSERTION_FAILED")
    pad = "x" * 200
    return [
        Rejected(f'{{"id": "{prefix}{i}", "pad": "{pad}"}}\n'.encode(), error) for i in range(count)
    ]


def test_a_dead_letter_write_that_fails_halfway_leaves_the_file_as_it_was(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    with small_filesystem(disk) as tmpfs:
        letters = DeadLetters(disk / "dead-letter")
        first = letters.write("db.ev", rejected(1, "before"), batch="b1")
        assert first is not None
        before = first.read_bytes()
        big = rejected(2000, "r")  # ~0.5 MB: far more than the room left
        with disk_full(disk, tmpfs=tmpfs, room=ROOM, file=first), pytest.raises(OSError):
            letters.write("db.ev", big, batch="b2")
        assert first.read_bytes() == before, "the failed write left bytes behind"

        # The retry (the batch stayed spooled) writes every record once, whole.
        letters.write("db.ev", big, batch="b2")
        lines = first.read_bytes().splitlines()
        ids = [json.loads(line)["record"] for line in lines]  # no torn line
        assert len(ids) == 1 + len(big)
        assert len(set(ids)) == len(ids)
