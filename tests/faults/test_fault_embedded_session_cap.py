"""Regression test: the endpoint keeps at most ``--max-sessions`` sessions.

Before the fix every new ``session_id`` opened a chDB connection (about 1 MB of chDB's
memory) that lived until ``session_timeout`` after its last request, with no bound: a
client making a session per request (clickhouse-connect does unless told otherwise)
could grow the endpoint without limit. One more session than the limit is now refused
with USER_SESSION_LIMIT_EXCEEDED, while the open ones and requests without a session
go on, and an expired session's slot is free again at once.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from httpcall import call

from chworkers.embedded import EmbeddedClickHouse


def test_one_session_too_many_is_refused(tmp_path: Path) -> None:
    with EmbeddedClickHouse(tmp_path / "data", max_sessions=3) as ch:
        kept = [f"/?session_id={uuid.uuid4()}" for _ in range(2)]
        short = f"/?session_id={uuid.uuid4()}&session_timeout=0.5"
        for target in [*kept, short]:
            assert call(ch, target, b"SET max_threads = 1")[0] == 200
        status, headers, body = call(ch, f"/?session_id={uuid.uuid4()}", b"SELECT 1")
        assert headers["X-ClickHouse-Exception-Code"] == "700", (status, body)
        assert b"USER_SESSION_LIMIT_EXCEEDED" in body and b"--max-sessions" in body
        assert call(ch, kept[0], b"SELECT getSetting('max_threads')")[2] == b"1\n"
        assert call(ch, "/", b"SELECT 1")[2] == b"1\n"
        time.sleep(0.6)  # the short session has expired: its slot is free at once
        assert call(ch, f"/?session_id={uuid.uuid4()}", b"SELECT 2")[2] == b"2\n"
        assert call(ch, kept[1], b"SELECT 3")[2] == b"3\n"
