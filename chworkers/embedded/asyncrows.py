"""Where a flush of asynchronous inserts into several partitions keeps its rows until
its last part is written (see :mod:`chworkers.embedded.asynccomplete`): a file in the
table's data directory, named by the flush, holding its rows in ``Native`` as chDB
gave them."""

from __future__ import annotations

from pathlib import Path

from chworkers.embedded import blockids

#: A flush's rows, kept beside it until its parts are all written (see :func:`flush_file`).
_FLUSH_FILE = "chworkers_async_flush_{}.native"


def flush_token(flush_id: str) -> str:
    """The deduplication token of the flush ``flush_id``'s insert (its hash, in chDB's
    log of the table, names the flush's parts)."""
    return f"chworkers-async-flush-{flush_id}"


def flush_file(table_dir: Path, flush_id: str) -> Path:
    """Where a flush into several partitions keeps its rows (``Native``, as chDB wrote
    them) from before its first part until its last: a flush killed between its parts
    is completed from it at the next start, with its token (:func:`flush_token`)."""
    return table_dir / _FLUSH_FILE.format(flush_id)


def flush_files(table_dir: Path) -> dict[str, Path]:
    """The flush files in a table's directory, by flush (its token's hash)."""
    prefix, suffix = _FLUSH_FILE.split("{}")
    return {
        blockids.token_hash(flush_token(path.name[len(prefix) : -len(suffix)])): path
        for path in table_dir.glob(_FLUSH_FILE.format("*"))
    }
