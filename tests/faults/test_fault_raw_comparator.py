"""``chworkers bench --only raw``: the raw POSTs make the requests ``insert_raw`` makes.

Before: the baseline POSTed the body with nothing but the statement, while every
``insert_raw`` carries the settings of a synchronous, deduplicated chworkers insert and a
deduplication token; and at the large sizes a round was one request (``--rows`` 2M of
2M-row requests), so a run judged the 2M target on five samples.
"""

from __future__ import annotations

from concurrent.futures import Future

from chworkers.bench import raw
from chworkers.clickhouse.insertmode import SYNC_DEFAULTS
from chworkers.workers import tasks


def test_the_posts_carry_insert_raws_settings_and_token() -> None:
    body = b"\x04\x00\x02idUInt64" + bytes(32)
    settings = raw.post_settings("raw_sup", body)
    task = tasks.encode_insert(1, Future(), "raw_sup", body, None, None, None, fmt="Native")
    assert settings["insert_deduplication_token"] == task.token
    for name, value in SYNC_DEFAULTS.items():
        assert settings[name] == value
    other = raw.post_settings("raw_sup", body + b"\x00")
    assert other["insert_deduplication_token"] != task.token  # one per body
