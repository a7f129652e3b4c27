"""The JSON type and friends (Map, Array, Nested, Tuple, LowCardinality, Nullable) by
every path: a daemon's JSONEachRow pipeline, ``Supervisor.insert_raw`` and
``Supervisor.insert`` of rows (our Native encoder), each checked against what
clickhouse-connect's own insert stores for the same rows, and the Native bytes against
clickhouse-connect's.
"""

from __future__ import annotations

import json
import math
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform
from daemonthread import Running

from chworkers import Supervisor
from chworkers.clickhouse import native
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

COLUMNS = {
    "i": "UInt32",
    "j": "JSON",
    "jt": "JSON(a UInt32, b String)",
    "m": "Map(String, UInt64)",
    "mk": "Map(UInt64, Array(String))",
    "a": "Array(String)",
    "an": "Array(Nullable(Int32))",
    "aa": "Array(Array(Float64))",
    "n.x": "Array(UInt32)",
    "n.y": "Array(String)",
    "t": "Tuple(a Int32, b String)",
    "lc": "LowCardinality(String)",
    "lcn": "LowCardinality(Nullable(String))",
    "alc": "Array(LowCardinality(String))",
    "nu": "Nullable(Int64)",
    "ns": "Nullable(String)",
}
CREATE = (
    "i UInt32, j JSON, jt JSON(a UInt32, b String), m Map(String, UInt64), "
    "mk Map(UInt64, Array(String)), a Array(String), an Array(Nullable(Int32)), "
    "aa Array(Array(Float64)), n Nested(x UInt32, y String), t Tuple(a Int32, b String), "
    "lc LowCardinality(String), lcn LowCardinality(Nullable(String)), "
    "alc Array(LowCardinality(String)), nu Nullable(Int64), ns Nullable(String)"
)

ROWS: list[tuple[Any, ...]] = [
    (
        1,
        {"a": 1, "b": {"c": "x", "d": [1, 2]}, "s": 'é\u0000\n"q"'},
        {"a": 5, "b": "bb", "extra": [1.5, 2.5]},
        {"k": 1, "é": 2**64 - 1},
        {1: ["x"], 2: []},
        ["x", "", "日本語"],
        [1, None, -(2**31)],
        [[0.5], [], [1e300, -0.0]],
        [1, 2],
        ["p", "q"],
        (-7, "tuple"),
        "v",
        None,
        ["lc1", "lc1", "lc2"],
        None,
        None,
    ),
    (2, {}, {}, {}, {}, [], [], [], [], [], (0, ""), "", "", [], 2**63 - 1, ""),
    (
        3,
        {"big": 2**63, "neg": -1, "f": 0.1, "t": True, "arr": [{"x": 1}, {"x": 2}]},
        {"a": 0, "b": ""},
        {"z": 0},
        {2**64 - 1: ["a", "b"]},
        ["\t\\"],
        [None],
        [[math.pi]],
        [7],
        ["z"],
        (2**31 - 1, "é"),
        "é",
        "w",
        [""],
        -(2**63),
        "s",
    ),
]


def create(client: Client, name: str) -> None:
    client.command(f"CREATE TABLE {name} ({CREATE}) ENGINE = MergeTree ORDER BY i")


def as_json(row: tuple[Any, ...]) -> bytes:
    record: dict[str, Any] = {}
    for (name, _), value in zip(COLUMNS.items(), row, strict=True):
        if name.startswith("n."):
            record.setdefault("n", {})[name[2:]] = value  # Nested as people send it
        elif name == "t":
            record[name] = {"a": value[0], "b": value[1]}
        elif name == "mk":
            record[name] = {str(k): v for k, v in value.items()}
        else:
            record[name] = value
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def stored(client: Client, name: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(
        f"toJSONString({c})" if COLUMNS[c].startswith("JSON") else f"`{c}`" for c in COLUMNS
    )
    return client.query(f"SELECT {cols} FROM {name} ORDER BY i").result_rows


def test_every_path_stores_what_clickhouse_connect_stores(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client, tmp_path: Path
) -> None:
    names = list(COLUMNS)
    for table in ("reference", "via_rows", "via_raw", "via_daemon"):
        create(ch_client, table)
    ch_client.insert("reference", ROWS, column_names=names)
    body = b"".join(map(as_json, ROWS))
    settings = PipelineSettings(name="p", table="via_raw").settings
    with Supervisor(f"{endpoint.url}/{database}", workers=1) as sup:
        assert sup.insert("via_rows", ROWS, names).result(60) == len(ROWS)
        sup.insert_raw("via_raw", body, "JSONEachRow", settings=settings).result(60)
    (tmp_path / "in.json").write_bytes(body)
    running = Running(
        {
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {"url": f"{endpoint.url}/{database}"},
            "supervisor": {"workers": 1},
            "metrics": {"port": 0},
            "spool": {"fsync": False},
            "pipelines": [
                {
                    "name": "d",
                    "source": "file",
                    "paths": [str(tmp_path / "in.json")],
                    "table": "via_daemon",
                    "unknown_fields": "reject",  # a field the table lacks is no silent loss
                }
            ],
        }
    )
    running.thread.join(60)
    assert running.code == 0 and running.error is None
    reference = stored(ch_client, "reference")
    assert [r[0] for r in reference] == [1, 2, 3]
    assert reference[0][1] == json.dumps(ROWS[0][1], ensure_ascii=False, separators=(",", ":"))
    for table in ("via_rows", "via_raw", "via_daemon"):
        assert stored(ch_client, table) == reference, table


def test_native_bytes_are_clickhouse_connects(endpoint: EmbeddedClickHouse, database: str) -> None:
    """Our encoder writes these types by clickhouse-connect's own serializer: the body the
    supervisor sends is the one clickhouse-connect's insert would send."""
    names, types = list(COLUMNS), list(COLUMNS.values())
    schema = native.TableSchema("t", tuple(names), tuple(types), server_tz=UTC)
    ctx = InsertContext("t", names, [get_from_name(t) for t in types], ROWS)
    theirs = b"".join(NativeTransform.build_insert(ctx))
    theirs = theirs[theirs.index(b"FORMAT Native\n") + len(b"FORMAT Native\n") :]
    assert native.encode(schema, ROWS, False) == theirs
