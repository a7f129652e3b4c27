"""Repair a MergeTree table's deduplication log after a crash, before chDB opens it.

A non-replicated MergeTree table with ``non_replicated_deduplication_window`` records an
insert's block id in ``deduplication_logs/`` *before* it renames the new part from
``tmp_insert_*`` to its final name. A process killed between the two (the embedded child
killed by SIGKILL mid-insert) leaves a log entry for a part that never became visible:
on the next start the temporary part is removed, but the entry stays, so the client's
retry of that very insert (same deduplication token, no answer received) is "already
inserted" and its rows are silently lost. The restarted engine also reuses the part's
block number, so the stale entry names a part that a later insert then creates.

The embedded endpoint runs :func:`repair` on its data directory before chDB opens it
(nothing else has the directory then: the engine's lock is ours): an "add" record whose
part is covered by no part directory of the table is dropped. Anything it cannot parse
is left exactly as it is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from chworkers.durable import replace_synced

log = logging.getLogger(__name__)

#: ``partition_min_max_level`` with an optional ``_mutation``; a partition id with an
#: underscore is not parsed (the log is then left alone).
_PART = re.compile(r"^([^_/]+)_(\d+)_(\d+)_(\d+)(?:_(\d+))?$")
_ADD = "1"


def _parse(name: str) -> tuple[str, int, int] | None:
    match = _PART.match(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


def _covered(part: tuple[str, int, int], present: list[tuple[str, int, int]]) -> bool:
    partition, low, high = part
    return any(p == partition and lo <= low and high <= hi for p, lo, hi in present)


def repair_table(table_dir: Path) -> int:
    """Drop the log entries of ``table_dir`` whose part does not exist; how many."""
    logs = sorted((table_dir / "deduplication_logs").glob("deduplication_log_*.txt"))
    if not logs:
        return 0
    present = []
    for entry in table_dir.iterdir():
        if entry.is_dir() and entry.name not in ("detached", "deduplication_logs"):
            parsed = _parse(entry.name)
            if parsed is not None:
                present.append(parsed)
            elif not entry.name.startswith(("tmp", "delete_tmp")):
                return 0  # a part name we cannot read: leave the log alone
    dropped = 0
    for path in logs:
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3 and fields[0] == _ADD:
                part = _parse(fields[1])
                if part is None:
                    return dropped  # unknown record: stop touching this table
                if not _covered(part, present):
                    log.warning(
                        "%s: dropping the deduplication log's entry for part %s, which "
                        "was never committed (the engine was killed mid-insert); a retry "
                        "of that insert will now land",
                        table_dir,
                        fields[1],
                    )
                    dropped += 1
                    continue
            kept.append(line)
        if len(kept) != len(lines):
            replace_synced(path, "".join(kept).encode(), suffix=".repair")
    return dropped


def repair(data_dir: Path) -> int:
    """:func:`repair_table` for every table of the chDB data directory ``data_dir``."""
    store = data_dir / "store"
    if not store.is_dir():
        return 0
    return sum(repair_table(table) for table in store.glob("*/*") if table.is_dir())
