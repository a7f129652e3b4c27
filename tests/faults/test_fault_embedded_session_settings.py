"""Regression tests: what a session request's URL settings and database leave behind.

ClickHouse applies URL settings and ``database`` to one query, never to the session.
Before the fix, a session's ``SET`` sent with URL settings kept those settings in the
session for good (``max_threads=3`` in the URL of ``SET max_block_size = 777`` stayed
3), and a ``USE`` that failed forgot the URL's database was in effect, so the next
request ran in it. A streamed SELECT in a session now reads the session's wrapping
settings once per ``SET`` instead of on every request: a ``SET`` after it still counts.
"""

from __future__ import annotations

import uuid

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def _post(endpoint: EmbeddedClickHouse, target: str, body: str) -> tuple[int, bytes]:
    status, _, data = call(endpoint, target, body.encode(), timeout=60)
    return status, data


def test_url_settings_of_a_set_request_end_with_it(endpoint: EmbeddedClickHouse) -> None:
    sid = f"session_id={uuid.uuid4()}"
    read = "SELECT getSetting('max_threads'), getSetting('max_block_size'), getSetting('extremes')"
    default_threads = _post(endpoint, f"/?{sid}", "SELECT getSetting('max_threads')")[1]
    assert default_threads != b"3\n"
    # The URL's max_threads lasts for the SET; max_block_size, which it assigns, stays.
    status, body = _post(
        endpoint, f"/?{sid}&max_threads=3&max_block_size=5", "SET max_block_size = 777"
    )
    assert status == 200, body
    assert _post(endpoint, f"/?{sid}", read)[1] == default_threads[:-1] + b"\t777\tfalse\n"
    # A SET that assigns a URL setting itself keeps its own value.
    status, body = _post(endpoint, f"/?{sid}&max_threads=3", "SET max_threads = 1, extremes = 1")
    assert status == 200, body
    assert _post(endpoint, f"/?{sid}", read + " SETTINGS extremes = 0")[1] == b"1\t777\tfalse\n"


def test_a_failed_use_leaves_the_session_as_it_was(
    endpoint: EmbeddedClickHouse, database: str
) -> None:
    sid = f"session_id={uuid.uuid4()}"
    status, body = _post(endpoint, f"/?{sid}&database={database}", "USE no_such_database_xyz")
    assert status == 404 and b"UNKNOWN_DATABASE" in body, body
    assert _post(endpoint, f"/?{sid}", "SELECT currentDatabase()")[1] == b"default\n"


def test_a_wrapping_set_after_a_streamed_select_counts(endpoint: EmbeddedClickHouse) -> None:
    target = f"/?session_id={uuid.uuid4()}"
    select = "SELECT number AS n FROM numbers(3) SETTINGS max_block_size=1 FORMAT JSONEachRow"
    rows = b'{"n":0}\n{"n":1}\n{"n":2}\n'
    assert _post(endpoint, target, select) == (200, rows)
    assert _post(endpoint, target, "SET output_format_json_array_of_rows = 1")[0] == 200
    assert _post(endpoint, target, select) == (200, b'[\n{"n":0},\n{"n":1},\n{"n":2}\n]\n')
    assert _post(endpoint, target, "SET output_format_json_array_of_rows = 0")[0] == 200
    assert _post(endpoint, target, select) == (200, rows)
