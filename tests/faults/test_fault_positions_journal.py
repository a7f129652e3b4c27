"""File positions are saved as a journal of what changed, not rewritten whole each save.

Every save rewrote the pipeline's whole positions file (fsync'd, renamed): 33 ms per
save at 10,000 files, growing with every file kept, though a batch moves a few of them.
Now a save appends a checksummed record of the positions it changed to a journal
(fsync'd), compacted into the snapshot once it outgrows it. These tests hold the
properties that must survive that: the cost of a save (bytes the process writes) does
not grow with the files left untouched, a ``kill -9`` at any point (mid-append,
mid-compaction) restarts at exactly what was confirmed, a torn last record is ignored,
and a positions file from an earlier version (the snapshot alone) still loads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.positionsfile import journal_record


def position(i: int, offset: int) -> dict[str, int]:
    return {"dev": 64768, "ino": 5000 + i, "offset": offset, "head": 77, "head_len": 256}


def written() -> int:
    """Bytes this process has passed to write(2) so far (whatever the code counts)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def bytes_per_save(root: Path, kept: int, saves: int = 40) -> float:
    """Bytes written per save of one position, with ``kept`` positions saved before."""
    checkpoints = Checkpoints(root)
    paths = [f"/var/log/app/f{i:05d}.log" for i in range(kept)]
    checkpoints.commit("p", {p: position(i, 1) for i, p in enumerate(paths)})
    before = written()
    for n in range(saves):
        checkpoints.commit("p", {paths[n % kept]: position(n % kept, 100 + n)})
    per_save = (written() - before) / saves
    assert checkpoints.load("p")[paths[saves % kept - 1]]["offset"] == 100 + saves - 1
    return per_save


def test_a_save_costs_what_changed_not_the_files_kept(tmp_path: Path) -> None:
    small = bytes_per_save(tmp_path / "small", kept=50)
    large = bytes_per_save(tmp_path / "large", kept=5000)
    # 5,000 positions are ~600 KB: rewritten whole, each save writes that much.
    assert large < 2 * small + 1024, (small, large)
    assert large < 1024, large


def test_the_journal_is_compacted_and_stays_bounded(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path)
    checkpoints.commit("p", {f"/logs/{i}": position(i, 0) for i in range(20)})
    expected = {}
    for n in range(1000):  # ~85 KB of records, past the bound (64 KB, the snapshot's size)
        expected[f"/logs/{n % 20}"] = position(n % 20, n + 1)
        checkpoints.commit("p", {f"/logs/{n % 20}": position(n % 20, n + 1)})
    journal = tmp_path / "p.journal"
    assert journal.stat().st_size <= 64 * 1024 + 200
    assert Checkpoints(tmp_path).load("p") == expected
    checkpoints.close()  # at a stop: the snapshot alone holds every position
    assert journal.read_bytes().startswith(b"base ")  # which snapshot it follows, no record
    assert journal.read_bytes().count(b"\n") == 1
    assert json.loads((tmp_path / "p.json").read_text()) == expected


# A process saving positions as the daemon does after each spooled batch: it prints a
# save's number once the save has returned (confirmed). Compactions are made frequent
# (every ~2 KB of journal) so that a kill lands in one as often as in an append.
SAVER = textwrap.dedent(
    """
    import sys
    from chworkers.daemon import positionsfile
    from chworkers.daemon.checkpoints import Checkpoints

    positionsfile.COMPACT_MIN_BYTES = 2048
    checkpoints = Checkpoints(sys.argv[1])
    start = int(sys.argv[2])
    for n in range(start, start + 1_000_000):
        i = n % 30
        pos = {"dev": 64768, "ino": 5000 + i, "offset": n, "head": 77, "head_len": 256}
        checkpoints.commit("p", {f"/logs/{i}": pos})
        sys.stdout.write(f"{n}\\n")
        sys.stdout.flush()
    """
)


def expected_after(confirmed: int) -> dict[str, int]:
    """Each file's offset once saves 0..``confirmed`` are done (the last per file)."""
    return {f"/logs/{n % 30}": n for n in range(max(0, confirmed - 29), confirmed + 1)}


def test_kill_9_mid_save_restarts_at_what_was_confirmed(tmp_path: Path) -> None:
    start = 0
    for stop_after in (60, 200, 333):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        confirmed = start - 1
        for line in proc.stdout:
            confirmed = int(line)
            if confirmed - start >= stop_after:
                break
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().split()  # confirmed before the kill, still in the pipe
        proc.wait()
        confirmed = max([confirmed, *map(int, rest)])
        offsets = {p: pos["offset"] for p, pos in Checkpoints(tmp_path).load("p").items()}
        expected = expected_after(confirmed)
        in_flight = f"/logs/{(confirmed + 1) % 30}"  # saved or not: it was not confirmed
        if offsets.get(in_flight) == confirmed + 1:
            expected[in_flight] = confirmed + 1
        assert offsets == expected, (
            confirmed,
            sorted(set(offsets.items()) ^ set(expected.items())),
        )
        start = confirmed + 2  # the restarted process goes on where the file left it


def test_a_torn_last_record_is_ignored_and_saves_go_on(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path)
    checkpoints.commit("p", {"/logs/a": position(1, 10), "/logs/b": position(2, 20)})
    checkpoints.commit("p", {"/logs/a": position(1, 11)})  # a journal record
    journal = tmp_path / "p.journal"
    assert journal.stat().st_size > 0
    with open(journal, "ab") as fh:  # a power loss mid-append: half a record
        fh.write(journal_record({"/logs/b": position(2, 99)})[:-12])
    reread = Checkpoints(tmp_path)
    assert reread.load("p") == {"/logs/a": position(1, 11), "/logs/b": position(2, 20)}
    reread.commit("p", {"/logs/b": position(2, 21)})  # not appended after the torn bytes
    reread.commit("p", {"/logs/a": position(1, 12)})
    assert Checkpoints(tmp_path).load("p") == {
        "/logs/a": position(1, 12),
        "/logs/b": position(2, 21),
    }
    # A record whose checksum does not match is no record either.
    record = journal_record({"/logs/a": position(1, 500)})
    with open(journal, "ab") as fh:
        fh.write(record.replace(b"500", b"501"))
    assert Checkpoints(tmp_path).load("p")["/logs/a"]["offset"] == 12


def test_a_positions_file_of_an_earlier_version_loads(tmp_path: Path) -> None:
    old = {  # as versions before the journal wrote it, one without fingerprints too
        "/logs/a.log": {"dev": 1, "ino": 2, "offset": 300},
        "/logs/b.log": position(3, 400),
    }
    (tmp_path / "p.json").write_text(json.dumps(old, sort_keys=True))
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.load("p") == old
    checkpoints.commit("p", {"/logs/b.log": position(3, 450)})
    checkpoints.commit("p", {"/logs/b.log": position(3, 460)})
    assert Checkpoints(tmp_path).load("p")["/logs/b.log"]["offset"] == 460
    checkpoints.close()
    assert json.loads((tmp_path / "p.json").read_text())["/logs/b.log"]["offset"] == 460
