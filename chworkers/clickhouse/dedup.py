"""Idempotent inserts: batch normalisation, deduplication tokens, the dedup-window check.

Every insert through chworkers carries an ``insert_deduplication_token``: the caller's,
else one derived from the target table and the batch's content
(:func:`content_token`), so that repeating an insert whose response was lost cannot
duplicate rows. The daemon's spooled batches carry :func:`batch_token` (fixed when the
batch is spooled), each shard's part of a batch :func:`shard_token`, and the
sub-batches of a bisection :func:`sub_batch_token`. Every
token chworkers makes is made here.

ClickHouse honours the token only on tables that deduplicate: Replicated*MergeTree (whose
``replicated_deduplication_window`` is 1000 by default) and plain MergeTree tables created
with ``SETTINGS non_replicated_deduplication_window = N`` (N > 0; the server default is
0, which turns deduplication off). :func:`check_window` warns once per table and process
when an insert goes to a MergeTree table whose window is 0.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pickle
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import blake3

from chworkers.clickhouse.dsn import ConnectionConfig
from chworkers.errors import BatchError, TransportError

__all__ = [
    "KEYED_TOKEN",
    "Batch",
    "batch_token",
    "broker_token",
    "check_window",
    "content_token",
    "dedup_window",
    "derive_token",
    "file_chunk_token",
    "normalize",
    "request_token",
    "shard_token",
    "sub_batch_token",
]

log = logging.getLogger(__name__)

_WINDOW_RE = re.compile(r"non_replicated_deduplication_window\s*=\s*(\d+)")
_checked: set[tuple[str, str, str]] = set()
_checked_lock = threading.Lock()


@dataclass(frozen=True)
class Batch:
    """An insert's data in the shape clickhouse-connect takes, and what it is."""

    kind: str  # rows, columns, pandas, arrow
    data: Any
    column_names: Sequence[str] | None
    column_oriented: bool
    rows: int = field(default=0, compare=False)


def normalize(
    data: Any,
    column_names: Sequence[str] | None,
    column_oriented: bool = False,
    *,
    table: str = "",
) -> Batch:
    """The one batch normaliser (``Connection.insert`` and ``Supervisor.insert``): check
    ``data`` and bring it to one of the shapes clickhouse-connect takes.

    Rows (tuples, lists or dicts; any iterable of them), columns (``column_oriented``, or a
    mapping of column name to values), a numpy array (2-D or structured), a pandas
    DataFrame or a pyarrow Table or RecordBatch. Dict rows and numpy arrays become plain
    Python values. A malformed batch raises :class:`~chworkers.errors.BatchError` with
    the ``reason`` (and the ``row`` to blame, when there is one).
    """
    where = f"insert into {table!r}" if table else "insert"
    names: list[str] | None = None
    if column_names is not None:
        names = [column_names] if isinstance(column_names, str) else list(column_names)
    module = type(data).__module__.split(".")[0]
    kind = type(data).__name__
    if module == "pandas" and kind == "DataFrame":
        # The DataFrame's own columns unless told otherwise, as insert_df does.
        names = names if names is not None else [str(c) for c in data.columns]
        return Batch("pandas", data, names, False, len(data))
    if module == "pyarrow" and kind in ("Table", "RecordBatch"):
        return Batch("arrow", data, names, False, int(data.num_rows))
    if module == "numpy" and kind == "ndarray":
        if data.dtype.names:  # structured array: one column per field
            fields = list(data.dtype.names)
            # datetime64 fields stay arrays: their conversion needs the column types
            # (columnar.numpy_columns); tolist() would make naive (local time) datetimes.
            columns = [data[f] if data[f].dtype.kind == "M" else data[f].tolist() for f in fields]
            return Batch("columns", columns, names or fields, True, len(data))
        if data.ndim != 2:
            raise BatchError(
                f"{where}: a numpy array must be 2-D or structured, got {data.ndim}-D shape "
                f"{data.shape}",
                table=table,
                reason="unsupported batch type",
            )
        data = data.tolist()
    if isinstance(data, Mapping):
        return _columns(where, table, data, names)
    if isinstance(data, str | bytes) or not isinstance(data, Sequence | Iterable):
        raise BatchError(
            f"{where}: cannot insert a {type(data).__name__}; rows must be a list of rows, a "
            "mapping of columns, a numpy array, a pandas DataFrame or a pyarrow Table",
            table=table,
            reason="unsupported batch type",
        )
    rows = data if isinstance(data, Sequence) else list(data)
    if column_oriented:
        lengths = {len(column) for column in rows}
        if len(lengths) > 1:
            raise _ragged(where, table, lengths)
        return Batch("columns", rows, names, True, lengths.pop() if lengths else 0)
    if rows and isinstance(rows[0], Mapping):
        keys = names or list(rows[0])
        try:
            rows = [[row[k] for k in keys] for row in rows]
        except KeyError as exc:
            raise BatchError(
                f"{where}: a row has no value for column {exc.args[0]!r}",
                table=table,
                reason="missing value",
            ) from None
        except TypeError:  # a row that is not a mapping among mappings
            pass
        else:
            return Batch("rows", rows, keys, False, len(rows))
    if names is not None and not _all_rows_of_width(rows, len(names)):
        width = len(names)
        for index, row in enumerate(rows):
            if isinstance(row, str | bytes) or not isinstance(row, Sequence) or len(row) != width:
                got = len(row) if isinstance(row, Sequence) else type(row).__name__
                raise BatchError(
                    f"{where}: row {index} has {got} values, expected {width} ({', '.join(names)})",
                    table=table,
                    row=index,
                    reason="row width",
                )
    return Batch("rows", rows, names, False, len(rows))


def _all_rows_of_width(rows: Sequence[Any], width: int) -> bool:
    """True when every row is a tuple or a list of ``width`` values: two C-level passes
    instead of a Python loop, which cost a fifth of an insert. False says only that the
    row-by-row check must look (and name the row to blame)."""
    return set(map(type, rows)) <= {tuple, list} and set(map(len, rows)) <= {width}


def _columns(where: str, table: str, data: Mapping[Any, Any], names: list[str] | None) -> Batch:
    lengths = {len(column) for column in data.values()}
    if len(lengths) > 1:
        raise _ragged(where, table, lengths)
    if names is None:
        names = list(data)
    else:
        missing = [name for name in names if name not in data]
        if missing:
            raise BatchError(
                f"{where}: column_names {missing} are not among the columns given "
                f"({', '.join(map(str, data))})",
                table=table,
                reason="missing columns",
            )
    # Lists and arrays (numpy, pandas) as they are; other sequences as lists.
    columns = [
        c if isinstance(c, list) or hasattr(c, "dtype") else list(c)
        for c in (data[name] for name in names)
    ]
    return Batch("columns", columns, names, True, lengths.pop() if lengths else 0)


def _ragged(where: str, table: str, lengths: set[int]) -> BatchError:
    return BatchError(
        f"{where}: columns have different lengths {sorted(lengths)}",
        table=table,
        reason="ragged columns",
    )


def derive_token(database: str | None, table: str, batch: Batch) -> str:
    """A token that is the same for the same table and batch content (and only then)."""
    key = f"{database or ''}\0{table}"
    context = f"{batch.kind}\0{batch.column_names}"
    if batch.kind == "pandas":
        return content_token(key, context, _pandas_chunks(batch.data))
    if batch.kind == "arrow":
        return content_token(key, context, _arrow_chunks(batch.data))
    try:
        data = pickle.dumps(batch.data, protocol=4)
    except Exception:
        data = repr(batch.data).encode()
    return content_token(key, context, (data,))


def content_token(table: str, context: str, chunks: Iterable[bytes | memoryview]) -> str:
    """The one content-derived token: a digest of the table, what the bytes are
    (``context``: form, column names, format) and the bytes themselves.

    BLAKE3 (128 bits): a cryptographic hash, so two different batches never share a
    token, and ~5x faster than ``hashlib.blake2b`` (a 54 MB batch in ~12 ms of CPU
    instead of ~60 ms): every insert pays for it before its request can start.
    """
    h = blake3.blake3(f"{table}\0{context}\0".encode())
    for chunk in chunks:
        h.update(chunk)
    return f"chw-{h.hexdigest(16)}"


def batch_token(spool_id: str, seq: int) -> str:
    """The token of spooled batch ``seq``: fixed when it is spooled, never repeated
    (batch numbers never repeat in a spool, and spool ids are random)."""
    return f"chw-{spool_id}-{seq}"


#: How the token of a request with an ``Idempotency-Key`` begins.
KEYED_TOKEN = "chw-key-"


def request_token(table: str, key: str) -> str:
    """The token of a pushed request that carries an ``Idempotency-Key``: the client's key
    (hashed: any text, a fixed length) for the table, whichever daemon or spool takes it,
    so that a request sent again after a lost answer is dropped by ClickHouse."""
    digest = hashlib.sha256(f"{table}\0{key}".encode()).hexdigest()[:32]
    return f"{KEYED_TOKEN}{digest}"


def broker_token(broker: str, stream: str, group: str, ids: Sequence[str]) -> str:
    """The token of a broker batch: made from the stream, the consumer group and the
    batch's message ids in order, so that any daemon that rebuilds the batch from its
    manifest inserts it with the same token."""
    digest = hashlib.sha256("\0".join((broker, stream, group, *ids)).encode()).hexdigest()
    return f"chw-{broker}-{digest[:32]}"


def shard_token(token: str, shard: int) -> str:
    """The token of the part of a batch (token ``token``) that goes to shard ``shard``
    of a cluster: the same batch split the same way, the same tokens, shard by shard."""
    return f"{token}@shard{shard}"


def sub_batch_token(token: str, start: int, stop: int) -> str:
    """The token of records ``start:stop`` of a batch whose token is ``token`` (the
    bisection of rejected rows): the same cut of the same batch, the same token."""
    return f"{token}:{start}-{stop}"


def partition_token(token: str, index: int) -> str:
    """The token of the ``index``-th group of whole partitions of a batch whose token is
    ``token`` (:mod:`chworkers.clickhouse.partitions`): the same batch, the same groups."""
    return f"{token}:p{index}"


def file_chunk_token(table: str, identity: str, first_row: int, rows: int) -> str:
    """The token of rows ``first_row:first_row + rows`` of a columnar file (Parquet, Arrow,
    Native) whose content identity is ``identity`` (its size and checksums), for
    ``table``: a replay of the same file cut the same way rebuilds the same tokens."""
    digest = hashlib.sha256(f"{table}\0{identity}\0{first_row}\0{rows}".encode()).hexdigest()
    return f"chw-file-{digest[:32]}"


def _pandas_chunks(df: Any) -> Iterator[bytes]:
    pd: Any = importlib.import_module("pandas")
    yield repr(list(zip(df.columns, map(str, df.dtypes), strict=True))).encode()
    try:
        yield pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()
    except TypeError:  # unhashable cells (lists, dicts)
        yield pickle.dumps(df.to_dict("list"), protocol=4)


def _arrow_chunks(table: Any) -> Iterator[bytes | memoryview]:
    yield str(table.schema).encode()
    yield str(table.num_rows).encode()
    for column in table.columns:
        for chunk in column.chunks:
            yield f"{chunk.offset}:{len(chunk)}".encode()
            for buf in chunk.buffers():
                if buf is not None:
                    yield memoryview(buf)


class Queries(Protocol):
    """What :func:`check_window` needs of a connection
    (:class:`~chworkers.clickhouse.connection.Connection`, which calls it)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def config(self) -> ConnectionConfig: ...

    @property
    def client(self) -> Any: ...


def dedup_window(conn: Queries, engine: str, engine_full: str) -> int | None:
    """The ``non_replicated_deduplication_window`` of a plain MergeTree table (its own, else
    the server's default); None for engines that deduplicate otherwise or not at all
    (Replicated and Shared tables keep their block ids in Keeper)."""
    if "MergeTree" not in engine or engine.startswith(("Replicated", "Shared")):
        return None
    match = _WINDOW_RE.search(engine_full)
    if match:
        return int(match.group(1))
    default = conn.client.query(
        "SELECT value FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'"
    ).result_rows
    return int(default[0][0]) if default else 0


def check_window(conn: Queries, database: str | None, table: str) -> None:
    """Warn (once per table and process) when ``table`` cannot deduplicate inserts.

    Never raises: a check that fails (e.g. no access to ``system.tables``) is logged and
    not repeated for that table.
    """
    db, _, name = table.rpartition(".")
    db = database or db or conn.config.database or ""
    key = (conn.endpoint, db, name)
    with _checked_lock:
        if key in _checked:
            return
    try:
        db_expr = "{db:String}" if db else "currentDatabase()"
        rows = conn.client.query(
            f"SELECT engine, engine_full, database FROM system.tables WHERE database = {db_expr} AND name = {{t:String}}",
            parameters={"db": db, "t": name},
        ).result_rows
        if not rows:
            return  # the insert itself will report the unknown table
        engine, engine_full, db = str(rows[0][0]), str(rows[0][1]), str(rows[0][2])
        window = dedup_window(conn, engine, engine_full)
    except Exception as exc:  # the check is advisory
        # Imported here, in the worker that asks: the daemon's process computes tokens
        # (batch_token) and must not load clickhouse-connect for it.
        from chworkers.clickhouse.translate import translate_error

        if isinstance(translate_error(exc), TransportError):
            return  # the server is unreachable: check again on the next insert
        # Refused (e.g. no access to system.tables): don't pay for it on every insert.
        log.info("could not check the deduplication window of %s.%s: %s", db, name, exc)
        with _checked_lock:
            _checked.add(key)
        return
    with _checked_lock:
        if key in _checked:
            return
        _checked.add(key)
    if window == 0:
        log.warning(
            "table %s.%s (%s) does not deduplicate inserts: non_replicated_deduplication_window "
            "is 0, so an insert retried after a lost response may duplicate rows; create it "
            "with SETTINGS non_replicated_deduplication_window = 1000 (or use a Replicated engine)",
            db,
            name,
            engine,
        )
