"""`chworkers check` judges a missing table by the `create` that `run` would use.

Found in a user trial of issues 14 and 15:
- two pipelines into one table, one of them with `create`: `run` creates the table and
  both go in, but `check` printed "table ts MISSING (create it, or declare `create` in
  the pipeline)" for the other and exited 1;
- with `[clickhouse] shards`, a missing table that `run` creates was not checked at all:
  a `create` ClickHouse refuses, or a sharding key that does not fit its columns (a
  column the `create` lacks, a UUID under cityHash64) passed with exit 0, and `run` then
  held every batch of that pipeline in the spool, "waiting to be split by shard".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clirun import run_chworkers


def _check(tmp_path: Path, clickhouse: str, pipelines: str) -> tuple[int, str]:
    conf = tmp_path / "c.toml"
    conf.write_text(f'state_dir = "{tmp_path / "state"}"\n[clickhouse]\n{clickhouse}\n{pipelines}')
    result = run_chworkers("check", "-c", str(conf), timeout=120)
    return result.returncode, result.stdout


def _pipeline(name: str, table: str, **keys: str) -> str:
    lines = [f'[[pipelines]]\nname = "{name}"\nsource = "http"\ntable = "{table}"']
    lines += [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def test_a_table_another_pipeline_creates_is_not_missing(
    tmp_path: Path, endpoint: Any, database: str
) -> None:
    code, out = _check(
        tmp_path,
        f'url = "{endpoint.url}/{database}"',
        _pipeline("fed", "shared") + _pipeline("maker", "shared", create="x UInt8"),
    )
    assert "pipeline fed: table shared missing; `run` creates it (pipeline maker's `create`)" in out
    assert "pipeline maker: table shared missing; `run` creates it\n" in out
    assert code == 0, out


def test_a_refused_create_of_another_pipeline_is_named(
    tmp_path: Path, endpoint: Any, database: str
) -> None:
    code, out = _check(
        tmp_path,
        f'url = "{endpoint.url}/{database}"',
        _pipeline("fed", "shared") + _pipeline("maker", "shared", create="x Strin"),
    )
    assert (
        "pipeline fed: table shared MISSING, and ClickHouse refuses pipeline maker's `create`: "
        "UNKNOWN_TYPE (50)"
    ) in out
    assert code == 1, out


def test_shards_check_the_create_and_the_key_of_a_missing_table(
    tmp_path: Path, endpoint: Any, database: str
) -> None:
    clickhouse = f'shards = [["{endpoint.url}"]]\ndatabase = "{database}"'
    fits = _pipeline("fed", "shared", sharding_key="x") + _pipeline(
        "maker", "shared", create="x UInt8, s String", sharding_key="sipHash64(s)"
    )
    code, out = _check(tmp_path, clickhouse, fits)
    assert (
        "shared missing (`run` creates it) (pipeline maker's `create`) "
        "(sharding key x fits its columns)"
    ) in out
    assert "shared missing (`run` creates it) (sharding key sipHash64(s) fits its columns)" in out
    assert code == 0, out

    uuid = _pipeline("u", "by_uuid", create="user_id UUID", sharding_key="cityHash64(user_id)")
    code, out = _check(tmp_path, clickhouse, uuid)
    assert "by_uuid missing (`run` creates it) (SHARDING KEY DOES NOT FIT: " in out
    assert "column 'user_id' is UUID" in out
    assert code == 1, out

    absent = _pipeline("n", "no_col", create="user_id String", sharding_key="nope")
    code, out = _check(tmp_path, clickhouse, absent)
    assert "the table has no column 'nope' (its columns: user_id)" in out
    assert code == 1, out

    refused = _pipeline("r", "refused", create="x Strin", sharding_key="x")
    code, out = _check(tmp_path, clickhouse, refused)
    assert "refused MISSING, and ClickHouse refuses its `create`: UNKNOWN_TYPE (50)" in out
    assert code == 1, out
