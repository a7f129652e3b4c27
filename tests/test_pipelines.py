from __future__ import annotations

import pytest

from chworkers.daemon.pipelinelist import build_pipelines
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.errors import ConfigError


def test_pipeline_from_toml_table() -> None:
    (p,) = build_pipelines(
        [
            {
                "name": "logs",
                "source": "file",
                "paths": ["/var/log/*.json"],
                "table": "db.events",
                "max_delay": "250ms",
                "max_bytes": "1MiB",
                "unknown_fields": "reject",
                "insert_settings": ["async_insert=0"],
            }
        ],
        env={},
        source="chworkers.toml",
    )
    assert p.limits.max_delay == pytest.approx(0.25)
    assert p.limits.max_bytes == 1024 * 1024
    assert p.settings == {
        "input_format_skip_unknown_fields": 0,
        "input_format_import_nested_json": 1,
        "date_time_input_format": "best_effort",
        "async_insert": "0",
    }


def test_env_overrides_address_pipelines_by_name() -> None:
    (p,) = build_pipelines(
        [{"name": "app-logs", "table": "t"}],
        env={"CHWORKERS_PIPELINE_APP_LOGS_MAX_ROWS": "500"},
        source="f",
    )
    assert p.max_rows == 500


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"table": "t"}, "name is required"),
        ({"name": "a", "table": "bad table"}, "expected a table name"),
        ({"name": "a", "table": "t", "format": "XML"}, "expected one of JSONEachRow"),
        ({"name": "a", "table": "t", "source": "file"}, "needs paths"),
        ({"name": "a", "table": "t", "source": "kafka"}, "'stdin', 'file'"),
        ({"name": "a", "table": "t", "max_rows": 0}, "max_rows = 0"),
        ({"name": "a", "table": "t", "insert_settings": ["x"]}, "not 'name=value'"),
        ({"name": "a", "table": "t", "tabel": "x"}, "did you mean 'table'"),
    ],
)
def test_invalid_pipelines_say_what_and_where(item: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_pipelines([item], env={}, source="chworkers.toml")


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        build_pipelines(
            [{"name": "a", "table": "t"}, {"name": "a", "table": "u"}], env={}, source="f"
        )


def test_create_statement_sets_the_dedup_window_on_plain_mergetree() -> None:
    p = PipelineSettings(name="p", table="events", create="ts DateTime, n UInt64")
    assert p.create_statement() == (
        "CREATE TABLE IF NOT EXISTS events (ts DateTime, n UInt64) ENGINE = MergeTree "
        "ORDER BY tuple() SETTINGS non_replicated_deduplication_window = 1000"
    )
    q = PipelineSettings(
        name="q", table="e", create="n UInt64", engine="ReplacingMergeTree ORDER BY n"
    )
    assert "deduplication_window" not in (q.create_statement() or "")
    assert PipelineSettings(name="r", table="e").create_statement() is None
