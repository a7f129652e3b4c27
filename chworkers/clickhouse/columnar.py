"""Columnar batches (Arrow, numpy) in the form the insert sends.

An Arrow table or record batch is sent as Arrow: one IPC stream (``FORMAT ArrowStream``)
written in the producer. The IPC writer writes only the rows of a slice, where pickling
a slice would carry its parent's whole buffers (a 100k-row slice of a 2M-row table
pickles to 76 MB; its IPC stream is 3.8 MB). ClickHouse converts Arrow types to the
table's columns as it does for clickhouse-connect's ``insert_arrow``.

numpy columns go through clickhouse-connect's Native serializer, which takes numeric
arrays but not ``datetime64`` ones: :func:`numpy_columns` converts those the way
clickhouse-connect's ``insert_df`` converts a DataFrame's datetime columns (to whole
units of the column's precision, marked as ints), so a numpy column lands as the same
column of a DataFrame would.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from chworkers.errors import BatchError

__all__ = ["ARROW_FORMAT", "arrow_compression", "arrow_stream", "numpy_columns"]

#: The ClickHouse format Arrow batches are sent in.
ARROW_FORMAT = "ArrowStream"


def arrow_compression(compress: bool | str) -> str | None:
    """The codec an Arrow stream's buffers are compressed with for a connection whose
    ``compress`` option is ``compress``: lz4 for true (clickhouse-connect's first
    choice), lz4 or zstd as named; None for false or a codec Arrow IPC does not have."""
    if compress is True:
        return "lz4"
    return compress if compress in ("lz4", "zstd") else None


def arrow_stream(
    data: Any,
    column_names: Sequence[str] | None,
    *,
    table: str = "",
    compression: str | None = None,
) -> tuple[Any, list[str]]:
    """``data`` (a pyarrow Table or RecordBatch) as one Arrow IPC stream, and the columns
    it fills: ``column_names`` (renaming the Arrow columns, in order) or the Arrow names.
    With ``compression`` (``lz4`` or ``zstd``) its buffers are compressed inside the
    stream, as clickhouse-connect's ``insert_arrow`` sends them.

    Returns a ``pyarrow.Buffer`` (read-only, supports the buffer protocol).
    """
    pa: Any = importlib.import_module("pyarrow")
    names = list(data.schema.names)
    if column_names is not None:
        given = list(column_names)
        if len(given) != len(names):
            raise BatchError(
                f"insert into {table!r}: {len(given)} column_names ({', '.join(given)}) for an "
                f"Arrow batch of {len(names)} columns ({', '.join(names)})",
                table=table,
                reason="column count",
            )
        if given != names:
            data = data.rename_columns(given)
            names = given
    options = None
    if compression is not None:
        options = pa.ipc.IpcWriteOptions(compression=pa.Codec(compression=compression))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema, options=options) as writer:
        writer.write(data)
    return sink.getvalue(), names


def numpy_columns(
    column_names: Sequence[str],
    column_types: Sequence[Any],
    columns: Sequence[Any],
    *,
    table: str = "",
) -> tuple[list[Any], dict[str, str]]:
    """``columns`` ready for clickhouse-connect's Native serializer: ``datetime64`` arrays
    of date and time columns become whole units of the column's precision, with the
    column formats that tell the serializer they are ints. NaT is NULL in a Nullable
    column and the column's default (1970-01-01) in another, as ClickHouse stores a NULL
    sent for a column that is not Nullable.

    Other columns are returned as they are.
    """
    if len(columns) != len(column_names):
        raise BatchError(
            f"insert into {table!r}: {len(columns)} columns for {len(column_names)} insert "
            f"columns ({', '.join(column_names)})",
            table=table,
            reason="column count",
        )
    out = list(columns)
    formats: dict[str, str] = {}
    for index, (name, ch_type, column) in enumerate(
        zip(column_names, column_types, out, strict=True)
    ):
        dtype = getattr(column, "dtype", None)
        if dtype is None or dtype.kind != "M":
            continue
        try:
            np_type = str(ch_type.np_type)
        except Exception:  # a type without a numpy equivalent: let the serializer say so
            continue
        if "datetime64" not in np_type:
            continue
        ints = column.astype(np_type).astype("int64")
        nat = column != column  # NaT compares unequal to itself
        if not nat.any():
            out[index] = ints.tolist()
        elif ch_type.nullable:
            out[index] = [
                None if gap else v for gap, v in zip(nat.tolist(), ints.tolist(), strict=True)
            ]
        else:
            ints[nat] = 0  # the column's default, as ClickHouse stores a NULL sent for it
            out[index] = ints.tolist()
        formats[name] = "int"
    return out, formats
