"""The settings chworkers adds to inserts (chworkers/clickhouse/insertmode.py)."""

from __future__ import annotations

import pytest

from chworkers.clickhouse.insertmode import insert_settings, is_async
from chworkers.errors import ConfigError


def test_synchronous_by_default_with_the_views_deduplicated() -> None:
    assert insert_settings(None, token="t") == {
        "async_insert": 0,
        "insert_deduplicate": 1,
        "deduplicate_blocks_in_dependent_materialized_views": 1,
        "insert_deduplication_token": "t",
        "send_progress_in_http_headers": 0,
    }


def test_asynchronous_waits_and_deduplicates_without_the_views_setting() -> None:
    out = insert_settings({"async_insert": "1"}, token="t")
    assert out == {
        "async_insert": "1",
        "wait_for_async_insert": 1,
        "async_insert_deduplicate": 1,
        "insert_deduplicate": 1,
        "insert_deduplication_token": "t",
        "send_progress_in_http_headers": 0,
    }


@pytest.mark.parametrize("value", [1, "1", "true", True, " on "])
def test_async_spellings(value: object) -> None:
    assert is_async({"async_insert": value})


@pytest.mark.parametrize("value", [0, "0", "false", False, None])
def test_sync_spellings(value: object) -> None:
    assert not is_async({"async_insert": value})


def test_the_callers_settings_win() -> None:
    out = insert_settings(
        {"deduplicate_blocks_in_dependent_materialized_views": 0, "insert_deduplicate": 0},
        token="t",
    )
    assert out["deduplicate_blocks_in_dependent_materialized_views"] == 0
    assert out["insert_deduplicate"] == 0


def test_defaults_the_server_lacks_are_left_out_but_not_the_callers() -> None:
    lacks = {"deduplicate_blocks_in_dependent_materialized_views", "async_insert"}
    out = insert_settings({"max_insert_threads": 2}, token="t", known=lambda n: n not in lacks)
    assert out == {
        "max_insert_threads": 2,
        "insert_deduplicate": 1,
        "insert_deduplication_token": "t",
        "send_progress_in_http_headers": 0,
    }


def test_fire_and_forget_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"insert into db\.ev: wait_for_async_insert = 0"):
        insert_settings({"async_insert": 1, "wait_for_async_insert": 0}, token="t", table="db.ev")


def test_progress_headers_are_off_even_when_the_caller_asks() -> None:
    out = insert_settings({"send_progress_in_http_headers": 1}, token="t")
    assert out["send_progress_in_http_headers"] == 0
    fixed = insert_settings(None, token="t", known=lambda n: n != "send_progress_in_http_headers")
    assert "send_progress_in_http_headers" not in fixed
