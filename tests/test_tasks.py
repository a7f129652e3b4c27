"""Tasks as bytes: batch and call encoding, results and errors across processes."""

from __future__ import annotations

import os
import pickle
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from chworkers.errors import BatchError, ConfigError, SerializationError, ServerError, TaskError
from chworkers.workers import channel, results, tasks
from chworkers.workers.deadletter import DeadLetter


def _insert(data: Any, column_names: Any = ("a", "b"), token: str | None = None) -> tasks.Task:
    return tasks.encode_insert(1, Future(), "events", data, column_names, None, token)


def _roundtrip(task: tasks.Task) -> tasks.InsertSpec:
    # The way a task travels: through a channel message with out-of-band buffers.
    header, *buffers = channel.encode(channel.TASKS, [task.wire()])
    _, body = channel.decode(bytes(header), [bytes(b) for b in buffers])
    (_id, _kind, payload, bufs) = body[0]
    return tasks.decode_insert(payload, bufs)


def test_rows_roundtrip_with_row_count_and_token() -> None:
    rows = [(i, f"user{i}") for i in range(100)]
    task = _insert(rows)
    assert task.rows == 100 and task.table == "events" and task.kind == tasks.INSERT
    spec = _roundtrip(task)
    assert spec.form == "rows" and spec.data == rows
    assert spec.column_names == ("a", "b") and spec.token == task.token


def test_token_is_derived_from_table_and_content() -> None:
    rows = [(1, "x"), (2, "y")]
    assert _insert(rows).token == _insert(list(rows)).token
    assert _insert(rows).token != _insert([(1, "x"), (2, "z")]).token
    other = tasks.encode_insert(1, Future(), "other", rows, ("a", "b"), None, None)
    assert other.token != _insert(rows).token
    assert _insert(rows, token="mine").token == "mine"
    assert _roundtrip(_insert(rows, token="mine")).token == "mine"


def test_columns_mapping_and_generators() -> None:
    spec = _roundtrip(_insert({"a": [1, 2], "b": ["x", "y"]}, column_names=None))
    assert spec.form == "columns" and spec.column_names == ("a", "b")
    assert spec.data == [[1, 2], ["x", "y"]]
    spec = _roundtrip(_insert({"b": ["x"], "a": [1]}, column_names=["a", "b"]))
    assert spec.data == [[1], ["x"]]
    task = _insert((i, str(i)) for i in range(5))
    assert task.rows == 5 and _roundtrip(task).data == [(i, str(i)) for i in range(5)]


def test_numpy_columns_travel_out_of_band_and_are_copied() -> None:
    col = np.arange(10_000, dtype=np.int64)
    task = _insert({"a": col, "b": col * 2}, column_names=None)
    assert task.buffers and sum(len(b) for b in task.buffers) >= 2 * col.nbytes
    assert len(task.payload) < 2_000  # the arrays are not inside the pickle
    col[:] = -1  # the caller reuses its array once insert() returned
    spec = _roundtrip(task)
    assert int(spec.data[0].sum()) == sum(range(10_000))


def test_pandas_and_arrow_batches() -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    task = _insert(df, column_names=None)
    assert task.rows == 3
    assert _roundtrip(task).data.equals(df)
    table = pa.table({"a": [1, 2], "b": ["x", "y"]})
    task = _insert(table, column_names=None)
    spec = _roundtrip(task)  # Arrow travels as an Arrow IPC stream
    assert (task.rows, spec.form, spec.fmt, spec.column_names) == (
        2,
        "raw",
        "ArrowStream",
        ("a", "b"),
    )
    assert pa.ipc.open_stream(spec.data).read_all().equals(table)


@pytest.mark.parametrize(
    ("data", "names", "reason"),
    [
        ([(1, "x"), (2,)], ("a", "b"), "row width"),
        ([(1, "x"), "ab"], ("a", "b"), "row width"),
        ({"a": [1, 2], "b": [1]}, None, "ragged columns"),
        ({"a": [1]}, ("a", "c"), "missing columns"),
        ("not rows", None, "unsupported batch type"),
        (42, None, "unsupported batch type"),
    ],
)
def test_bad_batches_are_refused_with_the_reason(data: Any, names: Any, reason: str) -> None:
    with pytest.raises(BatchError) as info:
        _insert(data, column_names=names)
    assert info.value.reason == reason
    assert "events" in str(info.value)
    if reason == "row width":
        assert info.value.row == 1


def test_table_name_required() -> None:
    with pytest.raises(BatchError, match="table"):
        tasks.encode_insert(1, Future(), "", [(1,)], None, None, None)


def test_calls_pickle_by_reference_or_fall_back_to_dill() -> None:
    task = tasks.encode_call(1, Future(), tasks.CALL, os.getpid, (), {})
    assert task.payload[0] == 0  # plain pickle
    base = 10
    task = tasks.encode_call(2, Future(), tasks.CALL, lambda x: x + base, (5,), {})
    assert task.payload[0] == 1  # dill, by value
    fn, args, kwargs, _ = tasks.decode_call(task.payload, task.buffers)
    assert fn(*args, **kwargs) == 15


def test_unserializable_task_raises_serialization_error() -> None:
    gen = (i for i in range(3))
    with pytest.raises(SerializationError) as info:
        tasks.encode_call(1, Future(), tasks.CALL, print, (gen,), {})
    assert info.value.what == "task"
    with pytest.raises(ConfigError, match="not callable"):
        tasks.encode_call(1, Future(), tasks.CALL, 42, (), {})  # type: ignore[arg-type]


class _Odd(Exception):
    def __init__(self, a: int, b: int) -> None:  # not picklable by default
        super().__init__(f"{a}/{b}")
        self.lock = threading.Lock()


def test_errors_cross_as_task_errors_with_type_and_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        err = results.decode_error(results.encode_error(exc))
    assert isinstance(err, TaskError)
    assert err.error_type == "builtins.ValueError" and "bad value" in str(err)
    assert "raise ValueError" in err.traceback
    assert isinstance(err.__cause__, ValueError)

    server = ServerError("no table", code=60, name="UNKNOWN_TABLE")
    back = results.decode_error(results.encode_error(server))
    assert type(back) is ServerError and back.code == 60

    odd = results.decode_error(results.encode_error(_Odd(1, 2)))
    assert isinstance(odd, TaskError) and odd.error_type.endswith("_Odd") and odd.__cause__ is None


def test_results() -> None:
    assert results.decode_result(results.encode_result(None)) is None
    assert results.decode_result(results.encode_result({"a": [1, 2]})) == {"a": [1, 2]}
    arr = results.decode_result(results.encode_result(np.arange(3)))
    assert list(arr) == [0, 1, 2]
    bad = results.encode_result(i for i in range(2))  # a generator cannot cross
    err = results.decode_error(bad)
    assert isinstance(err, SerializationError) and err.what == "result"


def test_dead_letter_decodes_its_batch() -> None:
    task = _insert([(1, "x")])
    letter = DeadLetter(
        task.id,
        task.kind,
        task.description,
        TaskError("x"),
        "error",
        task.table,
        task.rows,
        task.token,
        task.payload,
        tuple(task.buffers),
    )
    assert letter.batch().data == [(1, "x")]
    assert pickle.loads(pickle.dumps(letter)).batch().table == "events"


def test_raw_batches_travel_as_they_are() -> None:
    data = b'{"a":1,"b":"x"}\n{"a":2,"b":"y"}\n'
    task = tasks.encode_insert(
        1, Future(), "events", data, None, None, None, fmt="JSONEachRow", rows=2
    )
    assert task.rows == 2 and data in task.buffers  # not copied, not pickled
    spec = _roundtrip(task)
    assert (spec.form, spec.fmt, spec.data) == ("raw", "JSONEachRow", data)
    with pytest.raises(BatchError, match="must be bytes"):
        tasks.encode_insert(1, Future(), "events", "text", None, None, None, fmt="CSV")


def test_raw_inserts_carry_their_row_count_and_split_budget_to_the_worker() -> None:
    from chworkers.clickhouse.inserts import SplitBudget

    budget = SplitBudget(max_requests=7, max_seconds=1.5)
    task = tasks.encode_insert(
        1,
        Future(),
        "events",
        b'{"n":1}\n{"n":2}\n',
        None,
        None,
        "tok",
        fmt="JSONEachRow",
        rows=2,
        split=budget,
    )
    spec = _roundtrip(task)
    assert (spec.form, spec.rows, spec.split, spec.token) == ("raw", 2, budget, "tok")
    assert task.detailed and task.rows == 2
