"""Timestamps as people send them, through a daemon's JSON and CSV pipelines.

One daemon, two file pipelines (JSONEachRow, CSV) into tables with a column per
timestamp type (DateTime, DateTime64 of precision 0/3/6/9, with and without a zone of
their own, Nullable); each row sends one input form into every column. One query reads
back what ClickHouse stored, as nanoseconds since the epoch, and each value is checked
against the instant the input means, cut to the column's precision. The engine is told
to behave as a 25.8 server (``compatibility``), whose ``date_time_input_format`` is
``basic``: the pipelines' default must not depend on the server's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from clickhouse_connect.driver.client import Client
from daemonthread import Running

from chworkers.clickhouse.connection import Connection
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.embedded import EmbeddedClickHouse

pytestmark = pytest.mark.timeout(120)

COLUMNS = {  # name: (type, precision digits, zone for zone-less input)
    "dt": ("DateTime", 0, None),
    "dt_tokyo": ("DateTime('Asia/Tokyo')", 0, "Asia/Tokyo"),
    "d0": ("DateTime64(0)", 0, None),
    "d3": ("DateTime64(3)", 3, None),
    "d6": ("DateTime64(6)", 6, None),
    "d9": ("DateTime64(9)", 9, None),
    "d3_kolkata": ("DateTime64(3, 'Asia/Kolkata')", 3, "Asia/Kolkata"),
    "nd6": ("Nullable(DateTime64(6))", 6, None),
}

T = 1_796_119_200  # 2026-12-01T10:00:00Z
NS = 10**9

#: (JSON value, CSV field or None when CSV has no such form, the instant in ns since the
#: epoch, or a naive wall-clock time to be read in the column's zone).
FORMS: list[tuple[str, str | None, int | datetime]] = [
    ('"2026-12-01T10:00:00Z"', "2026-12-01T10:00:00Z", T * NS),
    ('"2026-12-01T12:00:00+02:00"', "2026-12-01T12:00:00+02:00", T * NS),
    ('"2026-12-01T10:00:00.123456789Z"', "2026-12-01T10:00:00.123456789Z", T * NS + 123456789),
    ('"2026-12-01T05:30:00.5-04:30"', '"2026-12-01T05:30:00.5-04:30"', T * NS + NS // 2),
    ('"2026-12-01 10:00:00"', "2026-12-01 10:00:00", datetime(2026, 12, 1, 10)),
    ('"2026-12-01 10:00:00.25"', "2026-12-01 10:00:00.25", datetime(2026, 12, 1, 10, 0, 0, 250000)),
    ("1796119200", "1796119200", T * NS),
    ('"1796119200"', None, T * NS),
    ("1796119200123", "1796119200123", T * NS + 123_000_000),
    ('"1796119200123"', None, T * NS + 123_000_000),
    ("1796119200123456", "1796119200123456", T * NS + 123_456_000),
    ("1796119200123456789", "1796119200123456789", T * NS + 123_456_789),
    ("1796119200.5", None, T * NS + NS // 2),
    ("86400", None, 86400 * NS),  # 1970-01-02: seconds, however few digits
]


def expected(value: int | datetime, digits: int, zone: str | None) -> int:
    if isinstance(value, datetime):
        value = int(value.replace(tzinfo=ZoneInfo(zone) if zone else UTC).timestamp()) * NS + (
            value.microsecond * 1000
        )
    step = 10 ** (9 - digits)
    return value // step * step


def table(client: Client, name: str) -> None:
    cols = ", ".join(f"{c} {t}" for c, (t, _, _) in COLUMNS.items())
    client.command(f"CREATE TABLE {name} (i UInt32, {cols}) ENGINE = MergeTree ORDER BY i")


def stored(client: Client, name: str) -> dict[int, list[int | None]]:
    cols = ", ".join(f"toUnixTimestamp64Nano(toDateTime64({c}, 9, 'UTC'))" for c in COLUMNS)
    return {
        int(r[0]): list(r[1:]) for r in client.query(f"SELECT i, {cols} FROM {name}").result_rows
    }


def test_json_and_csv_pipelines_read_timestamps_as_sent(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client, tmp_path: Path
) -> None:
    table(ch_client, "from_json")
    table(ch_client, "from_csv")
    json_lines, csv_lines = [], []
    for i, (js, csv, _) in enumerate(FORMS):
        json_lines.append("{" + f'"i":{i},' + ",".join(f'"{c}":{js}' for c in COLUMNS) + "}\n")
        if csv is not None:
            csv_lines.append(",".join([str(i)] + [csv] * len(COLUMNS)) + "\n")
    (tmp_path / "in.json").write_text("".join(json_lines))
    (tmp_path / "in.csv").write_text("".join(csv_lines))
    url = f"{endpoint.url}/{database}?compatibility=25.8&date_time_input_format=basic"
    common = {"source": "file", "max_delay": "50ms"}
    running = Running(
        {
            "state_dir": str(tmp_path / "state"),
            "clickhouse": {"url": url},
            "supervisor": {"workers": 1},
            "metrics": {"port": 0},
            "spool": {"fsync": False},
            "pipelines": [
                {"name": "j", "table": "from_json", "paths": [str(tmp_path / "in.json")], **common},
                {
                    "name": "c",
                    "table": "from_csv",
                    "format": "CSV",
                    "paths": [str(tmp_path / "in.csv")],
                    **common,
                },
            ],
        }
    )
    running.thread.join(60)  # file pipelines without follow: it stops when all is in
    assert running.code == 0 and running.error is None
    for name, column in (("from_json", 0), ("from_csv", 1)):
        got = stored(ch_client, name)
        for i, form in enumerate(FORMS):
            if form[column] is None:
                continue
            want = [expected(form[2], d, z) for _, d, z in COLUMNS.values()]
            assert got.get(i) == want, f"{name}: {form[column]}"


def test_before_1970_in_datetime64(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    ch_client.command("CREATE TABLE old (d3 DateTime64(3), d9 DateTime64(9)) ENGINE = Memory")
    settings = PipelineSettings(name="p", table="old").settings
    with Connection(f"{endpoint.url}/{database}?compatibility=25.8") as conn:
        conn.raw_insert(
            "old",
            b'{"d3":-1.5,"d9":-1500}\n',
            fmt="JSONEachRow",
            settings=settings,
            deduplication_token="o",
        )
    row = ch_client.query(
        "SELECT toUnixTimestamp64Nano(toDateTime64(d3, 9)), toUnixTimestamp64Nano(d9) FROM old"
    ).result_rows[0]
    assert row == (-1_500_000_000, -1500 * NS)  # magnitude: seconds, signed


def test_as_sent_leaves_the_server_to_decide(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client
) -> None:
    """timestamps = "as_sent": the numbers go as they are (seconds for the server; epoch
    milliseconds then saturate a DateTime column, as ClickHouse does on its own)."""
    ch_client.command("CREATE TABLE raw (dt DateTime) ENGINE = Memory")
    settings = PipelineSettings(name="p", table="raw", timestamps="as_sent").settings
    assert "date_time_input_format" not in settings
    with Connection(f"{endpoint.url}/{database}") as conn:
        conn.raw_insert(
            "raw",
            b'{"dt":1796119200123}\n',
            fmt="JSONEachRow",
            settings=settings,
            deduplication_token="r",
        )
    assert ch_client.command("SELECT toString(dt, 'UTC') FROM raw") == "2106-02-07 06:28:15"


def test_a_timestamp_column_added_later_is_seen(
    endpoint: EmbeddedClickHouse, database: str, ch_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chworkers.clickhouse import epochs

    ch_client.command("CREATE TABLE grows (k UInt32) ENGINE = Memory")
    settings = PipelineSettings(name="p", table="grows").settings
    with Connection(f"{endpoint.url}/{database}") as conn:
        conn.raw_insert(
            "grows", b'{"k":1}\n', fmt="JSONEachRow", settings=settings, deduplication_token="1"
        )
        ch_client.command("ALTER TABLE grows ADD COLUMN ts DateTime64(3)")
        monkeypatch.setattr(epochs, "COLUMNS_TTL", 0.0)  # instead of waiting a minute
        conn.raw_insert(
            "grows",
            b'{"k":2,"ts":1796119200123}\n',
            fmt="JSONEachRow",
            settings=settings,
            deduplication_token="2",
        )
    assert (
        ch_client.command("SELECT toUnixTimestamp64Milli(ts) FROM grows WHERE k = 2")
        == 1796119200123
    )
