"""Columnar and binary files (Parquet, Arrow IPC, Native) cut into batches.

A line-framed file is cut anywhere between two records; a Parquet or Arrow file only
between its own units: a Parquet file's row groups, an Arrow IPC file's or stream's
record batches. :func:`layout` reads a file's metadata (pyarrow, the optional extra
``chworkers[columnar]``) and :func:`plan` groups consecutive units into chunks of at
most ``max_rows`` rows and ``max_bytes`` bytes (a unit larger than that is a chunk of
its own: it is never cut). :func:`read_chunk` makes a chunk's payload, a complete file
of the same format that ClickHouse reads as it is (``INSERT ... FORMAT Parquet``): the
file's own bytes when one chunk covers all of it, else its units written again.

A chunk is named by the rows it covers (``first_row``, ``rows``), so a file's progress
is a row count that always falls on a unit boundary, and a replay with the same limits
cuts the same chunks again (the same deduplication tokens: :func:`chunk_token`).

A Native file is one chunk, sent whole: its blocks are not cut (finding a block's end
means decoding every column of it); its row count is read with clickhouse-connect's
Native reader.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import zlib
from collections.abc import Sequence
from typing import Any

from chworkers.clickhouse.dedup import file_chunk_token
from chworkers.errors import ColumnarFileError

__all__ = [
    "COLUMNAR_FORMATS",
    "Chunk",
    "FileLayout",
    "chunk_token",
    "file_identity",
    "layout",
    "plan",
    "read_chunk",
]

#: The formats a file source reads as whole files (not line-framed).
COLUMNAR_FORMATS = ("Parquet", "Arrow", "ArrowStream", "Native")

#: Bytes at each end of a file that its identity checksums (with its size).
IDENTITY_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """What a file holds: its units' row counts and sizes (``units`` empty: one piece)."""

    format: str
    size: int
    rows: int
    #: (rows, bytes) per unit (row group, record batch), in file order.
    units: tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Rows ``first_row`` to ``first_row + rows`` of a file: units ``units`` of it, or
    the whole file as it is (``whole``)."""

    first_row: int
    rows: int
    units: tuple[int, ...]
    whole: bool = False

    @property
    def end_row(self) -> int:
        return self.first_row + self.rows


def _pyarrow(module: str = "pyarrow") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ColumnarFileError(
            "reading Parquet and Arrow files needs pyarrow: pip install 'chworkers[columnar]'",
            rows="all",
        ) from exc


def file_identity(path: str) -> str:
    """A file's content identity: its size and checksums of its first and last bytes
    (a copy of the file has the same identity; a rewritten one another)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(IDENTITY_BYTES)
        fh.seek(max(0, size - IDENTITY_BYTES))
        tail = fh.read(IDENTITY_BYTES)
    return f"{size}-{zlib.crc32(head):08x}-{zlib.crc32(tail):08x}"


def chunk_token(table: str, identity: str, chunk: Chunk) -> str:
    """The deduplication token of a chunk: the same file cut the same way, the same
    tokens, whichever daemon reads it and however often."""
    return file_chunk_token(table, identity, chunk.first_row, chunk.rows)


def layout(path: str, format: str) -> FileLayout:
    """Read a file's metadata; :class:`ColumnarFileError` says what is wrong with it."""
    size = os.path.getsize(path)
    try:
        if format == "Parquet":
            pq = _pyarrow("pyarrow.parquet")
            meta = pq.ParquetFile(path).metadata
            units = []
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                nbytes = sum(
                    group.column(j).total_compressed_size for j in range(group.num_columns)
                )
                units.append((int(group.num_rows), int(nbytes)))
            return FileLayout(format, size, sum(r for r, _ in units), tuple(units))
        if format in ("Arrow", "ArrowStream"):
            units = [(b.num_rows, b.nbytes) for b in _arrow_batches(path, format)]
            return FileLayout(format, size, sum(r for r, _ in units), tuple(units))
        if format == "Native":
            return FileLayout(format, size, _native_rows(path), ())
    except ColumnarFileError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError, a Native parse error
        raise ColumnarFileError(
            f"not a readable {format} file: {_first(exc)}", path=path, rows="all"
        ) from exc
    raise ColumnarFileError(f"unsupported columnar format {format!r}", path=path, rows="all")


def plan(file: FileLayout, *, start_row: int, max_rows: int, max_bytes: int) -> list[Chunk]:
    """The chunks of ``file`` from ``start_row`` (a unit boundary) to its end."""
    if not file.units:  # one piece (Native)
        return [] if start_row >= file.rows else [Chunk(0, file.rows, (), whole=True)]
    if start_row == 0 and file.size <= max_bytes and file.rows <= max_rows:
        return [Chunk(0, file.rows, tuple(range(len(file.units))), whole=True)]
    chunks: list[Chunk] = []
    row = 0
    current: list[int] = []
    first = rows = size = 0
    for index, (unit_rows, unit_bytes) in enumerate(file.units):
        if row < start_row:
            row += unit_rows
            continue
        if current and (rows + unit_rows > max_rows or size + unit_bytes > max_bytes):
            chunks.append(Chunk(first, rows, tuple(current)))
            current, rows, size = [], 0, 0
        if not current:
            first = row
        current.append(index)
        rows += unit_rows
        size += unit_bytes
        row += unit_rows
    if current:
        chunks.append(Chunk(first, rows, tuple(current)))
    return [c for c in chunks if c.rows]


def read_chunk(path: str, format: str, chunk: Chunk) -> bytes:
    """A chunk's payload: a complete file of ``format`` holding exactly its rows."""
    try:
        if chunk.whole:
            with open(path, "rb") as fh:
                return fh.read()
        if format == "Parquet":
            return _parquet_chunk(path, chunk.units)
        if format in ("Arrow", "ArrowStream"):
            return _arrow_chunk(path, format, chunk.units)
    except Exception as exc:
        raise ColumnarFileError(
            f"rows {chunk.first_row}-{chunk.end_row} ({_unit_name(format)} "
            f"{_ranges(chunk.units)}) cannot be read: {_first(exc)}",
            path=path,
            rows=f"{chunk.first_row}-{chunk.end_row}",
        ) from exc
    raise ColumnarFileError(f"{format} files are sent whole", path=path, rows="all")


def _first(exc: BaseException, limit: int = 300) -> str:
    """An error's first line, at most ``limit`` characters (a parser may quote data)."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _unit_name(format: str) -> str:
    return "row groups" if format == "Parquet" else "record batches"


def _ranges(units: Sequence[int]) -> str:
    return f"{units[0]}-{units[-1]}" if len(units) > 1 else str(units[0]) if units else "-"


def _parquet_chunk(path: str, units: Sequence[int]) -> bytes:
    pq = _pyarrow("pyarrow.parquet")
    source = pq.ParquetFile(path)
    table = source.read_row_groups(list(units), use_threads=False)
    codec = str(source.metadata.row_group(units[0]).column(0).compression).lower()
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="none" if codec == "uncompressed" else codec,
        row_group_size=max(1, table.num_rows),
    )
    return sink.getvalue()


def _arrow_batches(path: str, format: str) -> list[Any]:
    pa = _pyarrow()
    source = pa.memory_map(path, "r")
    if format == "Arrow":
        reader = pa.ipc.open_file(source)
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]
    return list(pa.ipc.open_stream(source))


def _arrow_chunk(path: str, format: str, units: Sequence[int]) -> bytes:
    pa = _pyarrow()
    batches = _arrow_batches(path, format)
    sink = pa.BufferOutputStream()
    new = pa.ipc.new_file if format == "Arrow" else pa.ipc.new_stream
    with new(sink, batches[units[0]].schema) as writer:
        for index in units:
            writer.write_batch(batches[index])
    return bytes(sink.getvalue())


def _native_rows(path: str) -> int:
    """Rows of a Native file, read block by block with clickhouse-connect's Native
    reader (it decodes the columns: a Native file costs a read of its data here)."""
    ctypes: Any = importlib.import_module("clickhouse_connect.driver.ctypes")
    transform: Any = importlib.import_module("clickhouse_connect.driver.transform")
    with open(path, "rb") as fh:
        source = ctypes.RespBuffCls(_FileChunks(fh))
        result = transform.NativeTransform.parse_response(source)
        return int(result.row_count)


class _FileChunks:
    """A file as the chunk generator clickhouse-connect's response buffer reads."""

    def __init__(self, fh: Any) -> None:
        self.gen = iter(lambda: fh.read(1 << 20), b"")

    def close(self) -> None:
        pass
