"""A password inside a URL is never logged or printed.

SIGHUP logs each setting it applied or that waits for a restart old -> new
(render_changes), secrets only as changed; but ``clickhouse.url`` may carry a password
(``http://user:pw@host``, or ``?password=``, which the docs allow), and it was logged in
clear: a reload that changed the password wrote both, old and new, into the journal.
A section refused for ``url`` and ``shards`` both set, or for a replica with a user
and password in it, printed the password in its error too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chworkers.cli import commands
from chworkers.daemon import config
from chworkers.errors import ConfigError
from chworkers.settings import render_changes


def _load(tmp_path: Path, password: str) -> config.Config:
    url = f"http://ingest:{password}@ch1:8123,ch2:8123/db?password={password}"
    return config.load(data={"state_dir": str(tmp_path), "clickhouse": {"url": url}})


def test_a_reload_logs_no_password_of_a_url(tmp_path: Path) -> None:
    before, after = _load(tmp_path, "s3cret-old"), _load(tmp_path, "s3cret-new")
    lines = render_changes(before.settings, after.settings)
    assert lines == [
        "clickhouse.url 'http://ingest:***@ch1:8123,ch2:8123/db?password=***' "
        "(a password in it changed)"
    ]


@pytest.mark.parametrize(
    "clickhouse",
    [
        {"url": "http://ingest:s3cret@ch1:8123/db", "shards": [["http://a1:8123"]]},
        {"shards": [["http://ingest:s3cret@a1:8123"]]},
    ],
    ids=["url-and-shards", "replica-with-a-password"],
)
def test_a_refused_clickhouse_section_says_no_password(
    tmp_path: Path, clickhouse: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(data={"state_dir": str(tmp_path), "clickhouse": clickhouse})
    assert "s3cret" not in f"{caught.value} {caught.value.value!r}", caught.value
    assert "ingest:***@" in str(caught.value)


def test_chworkers_config_prints_no_password_of_a_url(tmp_path: Path) -> None:
    shown = commands._redacted(_load(tmp_path, "s3cret"))
    assert "s3cret" not in repr(shown), shown
