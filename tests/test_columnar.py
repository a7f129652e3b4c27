"""Columnar inserts (pyarrow, pandas, numpy) through the supervisor and a connection.

Every kind of input lands as clickhouse-connect would land it (``insert_arrow``,
``insert_df``, ``insert`` of plain Python values), checked against the embedded endpoint;
the pure parts (the Arrow IPC stream of a slice, tokens) are checked without it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from chclients import make_client, unique_name
from clickhouse_connect.driver.client import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from chworkers import EmbeddedClickHouse, Supervisor
from chworkers.clickhouse import columnar
from chworkers.clickhouse.connection import Connection
from chworkers.errors import BatchError
from chworkers.workers import tasks

pytestmark = pytest.mark.timeout(120)


def whole() -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(1000), pa.uint64()),
            "name": [f"n{i % 13}" for i in range(1000)],
            "ts": pa.array([1_700_000_000 + i for i in range(1000)], pa.timestamp("s")),
            "value": pa.array([i / 4 for i in range(1000)], pa.float64()),
        }
    )


WHOLE = whole()


# -- without the endpoint -----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 1000))
def test_an_arrow_slice_travels_as_its_own_rows(offset: int, length: int) -> None:
    part = WHOLE.slice(offset, length)
    stream, names = columnar.arrow_stream(part, None)
    assert names == WHOLE.schema.names
    assert pa.ipc.open_stream(stream).read_all().equals(part)
    # Only the slice's own buffers: a few hundred bytes of framing plus ~25 bytes a row.
    assert stream.size < 2048 + 40 * part.num_rows


def test_arrow_tokens_follow_content_and_column_names_rename() -> None:
    def task(data: Any, names: list[str] | None = None) -> tasks.Task:
        return tasks.encode_insert(1, Future(), "t", data, names, None, None)

    same = pa.table({c: WHOLE.column(c).slice(10, 20) for c in WHOLE.schema.names})
    first = task(WHOLE.slice(10, 20))
    assert first.token == task(same).token  # same rows, another parent: same token
    assert first.token != task(WHOLE.slice(11, 20)).token
    assert first.rows == 20
    renamed = task(WHOLE.slice(10, 20), ["a", "b", "c", "d"])
    spec = tasks.decode_insert(renamed.payload, renamed.buffers)
    assert (spec.form, spec.fmt, spec.column_names) == ("raw", "ArrowStream", ("a", "b", "c", "d"))
    assert pa.ipc.open_stream(spec.data).read_all().schema.names == ["a", "b", "c", "d"]
    with pytest.raises(BatchError, match="3 column_names"):
        task(WHOLE, ["a", "b", "c"])


# -- against the endpoint -------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(endpoint: EmbeddedClickHouse) -> Iterator[str]:
    name = unique_name("columnar")
    admin = make_client(endpoint)
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        admin.close()


@pytest.fixture(scope="module")
def sup(endpoint: EmbeddedClickHouse, db: str) -> Iterator[Supervisor]:
    with Supervisor(f"{endpoint.url}/{db}", workers=1, start_method="fork") as s:
        yield s


@pytest.fixture
def client(endpoint: EmbeddedClickHouse, db: str) -> Iterator[Client]:
    c = make_client(endpoint, database=db)
    yield c
    c.close()


def fresh(client: Client, columns: str, dedup: bool = False) -> str:
    name = unique_name("t")
    window = " SETTINGS non_replicated_deduplication_window = 100" if dedup else ""
    client.command(f"CREATE TABLE {name} ({columns}) ENGINE = MergeTree ORDER BY tuple(){window}")
    return name


def rows(client: Client, table: str) -> list[tuple[Any, ...]]:
    return client.query(f"SELECT * FROM {table} ORDER BY ALL").result_rows  # type: ignore[no-any-return]


COLUMNS = "id UInt64, name String, ts DateTime, value Float64"


def test_arrow_tables_slices_and_batches_land_as_insert_arrow_lands_them(
    sup: Supervisor, client: Client
) -> None:
    ours, theirs = fresh(client, COLUMNS), fresh(client, COLUMNS)
    parts = [
        WHOLE.slice(0, 300),
        WHOLE.slice(300, 200),
        *WHOLE.slice(500).to_batches(max_chunksize=250),
    ]
    futures = [sup.insert(ours, part) for part in parts]
    assert [f.result(60) for f in futures] == [300, 200, 250, 250]
    for part in parts:
        client.insert_arrow(
            theirs, pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part
        )
    assert rows(client, ours) == rows(client, theirs)
    assert len(rows(client, ours)) == 1000


def test_an_arrow_insert_replayed_is_dropped_by_its_token(sup: Supervisor, client: Client) -> None:
    table = fresh(client, COLUMNS, dedup=True)
    assert sup.insert(table, WHOLE.slice(0, 100)).result(60) == 100
    # The same rows built the same way again (a producer re-run): the same token.
    sup.insert(table, whole().slice(0, 100)).result(60)
    sup.insert(table, WHOLE.slice(100, 100)).result(60)
    assert len(rows(client, table)) == 200


def test_a_dataframe_lands_as_insert_df_lands_it(sup: Supervisor, client: Client) -> None:
    columns = (
        "id Int64, name Nullable(String), ts DateTime64(3), day Date, value Float32, flag Bool"
    )
    ours, theirs = fresh(client, columns), fresh(client, columns)
    df = pd.DataFrame(
        {
            "id": np.arange(50, dtype=np.int64),
            "name": [None if i % 5 == 0 else f"n{i}" for i in range(50)],
            "ts": pd.date_range("2024-03-01 12:00:00.123", periods=50, freq="1500ms"),
            "day": pd.date_range("2024-03-01", periods=50, freq="D"),
            "value": np.linspace(0, 1, 50),
            "flag": [i % 2 == 0 for i in range(50)],
        }
    )
    assert sup.insert(ours, df).result(60) == 50
    assert (
        sup._owner.outcomes.schemas.get(ours, tuple(df.columns)) is not None
    )  # encoded in the producer
    client.insert_df(theirs, df)
    assert rows(client, ours) == rows(client, theirs)


# (ClickHouse type, numpy values): every dtype clickhouse-connect writes for the column.
NUMPY_CASES: list[tuple[str, Any]] = [
    ("Int8", np.array([-3, 0, 7], dtype=np.int8)),
    ("Int64", np.array([-3, 0, 7], dtype=np.int32)),
    ("Int64", np.array([-(2**40), 0, 2**40], dtype=np.int64)),
    ("UInt64", np.array([0, 1, 2**63 + 5], dtype=np.uint64)),
    ("UInt16", np.array([0, 1, 65535], dtype=np.uint16)),
    ("UInt32", np.array([0, 1, 7], dtype=np.uint8)),
    ("Float32", np.array([0.5, -1.25, 3.0], dtype=np.float32)),
    ("Float64", np.array([0.5, -1.25, np.inf], dtype=np.float64)),
    ("Float64", np.array([1, 2, 3], dtype=np.int64)),
    ("Bool", np.array([True, False, True])),
    ("String", np.array(["a", "bé", ""])),
    ("String", np.array(["x", "yy", "zzz"], dtype=object)),
    ("Nullable(String)", np.array(["x", None, "z"], dtype=object)),
]
DATETIME64 = np.array(
    ["2024-05-01T12:30:45.123456789", "1999-12-31T23:59:59.999999999", "2038-01-19T03:14:07"],
    dtype="M8[ns]",
)
DATETIME_CASES: list[tuple[str, Any]] = [
    (ch_type, DATETIME64.astype(unit))
    for ch_type in ("DateTime", "DateTime64(3)", "DateTime64(6)", "Date", "Date32")
    for unit in ("M8[s]", "M8[ms]", "M8[us]", "M8[ns]")
] + [
    ("Nullable(DateTime)", np.array(["2024-05-01T12:30:45", "NaT", "NaT"], dtype="M8[s]")),
    ("Nullable(DateTime64(3))", np.array(["NaT", "2024-05-01T12:30:45.5", "NaT"], dtype="M8[ms]")),
    ("Date", np.array(["2024-05-01", "1970-01-02", "2100-01-01"], dtype="M8[D]")),
]


@pytest.mark.parametrize(
    "cases", [NUMPY_CASES, DATETIME_CASES], ids=["numbers+strings", "datetime64"]
)
def test_numpy_columns_of_every_accepted_dtype(
    sup: Supervisor,
    client: Client,
    endpoint: EmbeddedClickHouse,
    db: str,
    cases: list[tuple[str, Any]],
) -> None:
    """One column per (ClickHouse type, numpy dtype) case: through the supervisor and a
    connection, the columns land as clickhouse-connect lands the same values given as
    Python values (numbers, strings) or as a DataFrame column (datetime64, which its
    ``insert`` cannot write)."""
    names = [f"v{i}" for i in range(len(cases))]
    columns = ", ".join(
        f"{name} {ch_type}" for name, (ch_type, _) in zip(names, cases, strict=True)
    )
    ours, direct, theirs = fresh(client, columns), fresh(client, columns), fresh(client, columns)
    data = {name: values for name, (_, values) in zip(names, cases, strict=True)}
    assert sup.insert(ours, data).result(60) == 3
    with Connection(f"{endpoint.url}/{db}") as conn:
        conn.insert(direct, data)
    if cases is DATETIME_CASES:
        client.insert_df(theirs, pd.DataFrame(data))
    else:
        client.insert(theirs, [v.tolist() for v in data.values()], names, column_oriented=True)
    expected = rows(client, theirs)
    assert rows(client, ours) == expected
    assert rows(client, direct) == expected


def test_structured_arrays_fill_columns_by_field_name(
    sup: Supervisor, client: Client, endpoint: EmbeddedClickHouse, db: str
) -> None:
    table = fresh(client, "id Int32, name String, ts DateTime, value Float64")
    data = np.array(
        [(1, "a", np.datetime64("2024-01-01T00:00:01"), 0.5), (2, "b", np.datetime64("NaT"), 1.5)],
        dtype=[("id", "i4"), ("name", "U8"), ("ts", "M8[s]"), ("value", "f8")],
    )
    assert sup.insert(table, data).result(60) == 2
    assert sup.insert(table, data[["value", "id"]]).result(60) == 2  # a subset, any order
    with Connection(f"{endpoint.url}/{db}") as conn:
        conn.insert(table, data[:1])
    assert rows(client, table) == [
        (1, "", dt.datetime(1970, 1, 1), 0.5),
        (1, "a", dt.datetime(2024, 1, 1, 0, 0, 1), 0.5),
        (1, "a", dt.datetime(2024, 1, 1, 0, 0, 1), 0.5),
        (2, "", dt.datetime(1970, 1, 1), 1.5),
        (2, "b", dt.datetime(1970, 1, 1), 1.5),
    ]


def test_numpy_columns_that_do_not_fit_the_table_are_refused(
    client: Client, endpoint: EmbeddedClickHouse, db: str
) -> None:
    table = fresh(client, "id Int32, ts DateTime")
    with (
        Connection(f"{endpoint.url}/{db}") as conn,
        pytest.raises(BatchError, match="1 columns for 2"),
    ):
        conn.insert(table, [DATETIME64], column_oriented=True)
